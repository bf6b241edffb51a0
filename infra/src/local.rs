//! Local mode: the whole platform in one process. Every router on one port, a queue
//! poller feeding the dispatcher, the retention schedule, and the Meta sandbox — on the
//! memory backend or on AWS APIs (moto) through the real SDK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use kirim::config::{Backend, ConfigError, EnvReader, Settings};
use kirim::http::extract::ClientIp;
use kirim::ports::{Clock, SystemClock};
use kirim::secret::Secret;
use kirim::service::Deps;
use kirim::wiring::{aws_backends, memory_backends, meta_client, AwsResources, QueueUrls};
use tokio::task::JoinHandle;

use crate::bootstrap::ensure_stack;
use crate::sandbox::{Sandbox, SandboxConfig};

/// How often local mode queues again the status callbacks its queue refused (on AWS, the
/// `RetentionFunction`'s one-minute schedule).
pub const OWED_CALLBACKS_EVERY: Duration = Duration::from_secs(60);

/// No `Debug`: it holds the operator token and Meta's app secret as text.
#[derive(Clone)]
pub struct LocalConfig {
    pub listen: String,
    pub backend: Backend,
    /// For the aws backend: the emulator's endpoint (else the SDK's own resolution).
    pub aws_endpoint: Option<String>,
    /// Names the emulator's resources: `{stack}-Table`, `{stack}-DispatchQueue`, ...
    pub stack_name: String,
    pub operator_token: Option<String>,
    pub meta_app_secret: Option<String>,
    pub meta_verify_token: Option<String>,
    /// `None`: the embedded sandbox at `http://{listen}/_sandbox/graph`.
    pub meta_base_url: Option<String>,
    pub settings: Settings,
    pub sandbox_status_delay: Duration,
    pub sandbox_slow_delay: Duration,
    pub sandbox_rate_limit: u32,
    pub retention_interval: Duration,
    pub pollers: usize,
    /// The clock every service reads (tests move a manual one; scheduled sends ask it
    /// whether they are due).
    pub clock: LocalClock,
    /// The warm-process read cache on the aws backend (`KIRIM_READ_CACHE_TTL`, default 0:
    /// off, so a change is seen at once; Lambda uses `wiring::READ_CACHE_TTL`).
    pub read_cache_ttl: Duration,
    /// The KMS key that wraps TOTP seeds' data keys on the aws backend
    /// (`KIRIM_TOTP_KMS_KEY`; default: the emulator stack's `TotpSeedKey`, created by
    /// `ensure_stack`). The memory backend uses a local key generated at start.
    pub totp_kms_key: Option<String>,
    /// How long secrets are cached on the aws backend (`KIRIM_SECRET_CACHE_TTL`, default
    /// 5 s; Lambda uses `wiring::SECRET_CACHE_TTL`).
    pub secret_cache_ttl: Duration,
}

/// The clock local mode runs on: the system clock unless a test gives its own.
#[derive(Clone)]
pub struct LocalClock(pub Arc<dyn Clock>);

impl Default for LocalClock {
    fn default() -> Self {
        LocalClock(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for LocalClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalClock({})", self.0.now())
    }
}

/// The longest cache time local mode takes (`KIRIM_READ_CACHE_TTL`, `KIRIM_SECRET_CACHE_TTL`).
const DAY: Duration = Duration::from_secs(86_400);

/// Local mode's allowance of refused credentials per address, unless
/// `KIRIM_LIMIT_BAD_CREDENTIALS` says otherwise (its largest value).
pub const LOCAL_BAD_CREDENTIALS: u32 = 10_000;

impl LocalConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] from any source of variables (tests give their own).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut env = EnvReader::new(lookup).allowing_short_retention();
        let mut settings = env.settings();
        let r = &settings.retention;
        if r.messages < kirim::config::MIN_MESSAGES_RETENTION
            || r.audit < kirim::config::MIN_RECORDS_RETENTION
            || r.billing < kirim::config::MIN_RECORDS_RETENTION
        {
            tracing::warn!(
                messages_secs = r.messages.as_secs(),
                audit_secs = r.audit.as_secs(),
                billing_secs = r.billing.as_secs(),
                "retention shorter than a deployment may keep (14d, 1d, 1d): for tests only; \
                 a message or campaign still queued, retrying or fanning out when its retention \
                 passes is dropped, charged and not refunded (keep messages longer than the \
                 dispatch retries when a test sends to numbers that retry)"
            );
        }
        // Local default: the embedded sandbox, unless KIRIM_META_BASE_URL says otherwise.
        // Local mode: status callbacks may go to http and loopback receivers.
        settings.callbacks_allow_private = env.number("KIRIM_CALLBACKS_ALLOW_PRIVATE", true);
        // Local mode: every client is on loopback, one address, and a test that walks the
        // routes without (or with the wrong) credentials makes hundreds of refusals: the
        // allowance of refused credentials per address (a deployment's 30, then one every
        // 2 s) is raised unless set, so each is answered its own 401/403, not a 429.
        if env.optional("KIRIM_LIMIT_BAD_CREDENTIALS").is_none() {
            settings.limits.bad_credentials = LOCAL_BAD_CREDENTIALS;
        }
        // Set: the checked and normalised value (trimmed, no trailing `/`), not the raw one.
        let meta_base_url = env
            .optional("KIRIM_META_BASE_URL")
            .map(|_| settings.meta_base_url.clone());
        if meta_base_url.is_none() {
            settings.meta_base_url = String::new();
        }
        let cfg = LocalConfig {
            listen: env.or("KIRIM_LISTEN", "127.0.0.1:3000"),
            backend: env.backend(),
            aws_endpoint: env.optional("AWS_ENDPOINT_URL"),
            stack_name: env.or("KIRIM_STACK_NAME", "kirim-local"),
            operator_token: env.optional("KIRIM_OPERATOR_TOKEN"),
            meta_app_secret: env.optional("KIRIM_META_APP_SECRET"),
            meta_verify_token: env.optional("KIRIM_META_VERIFY_TOKEN"),
            meta_base_url,
            sandbox_status_delay: env
                .duration("KIRIM_SANDBOX_STATUS_DELAY", Duration::from_millis(500)),
            sandbox_slow_delay: env.duration(
                "KIRIM_SANDBOX_SLOW_DELAY",
                SandboxConfig::DEFAULT_SLOW_DELAY,
            ),
            sandbox_rate_limit: env.number(
                "KIRIM_SANDBOX_RATE_LIMIT",
                SandboxConfig::DEFAULT_RATE_LIMIT_PER_SEC,
            ),
            // Zero would panic the retention task's timer (and stop the cleanup, unseen), and
            // so would one past what the timer can add to now: at most a year.
            retention_interval: env.duration_within(
                "KIRIM_RETENTION_INTERVAL",
                Duration::from_secs(86_400),
                Duration::from_secs(1),
                Duration::from_secs(366 * 86_400),
            ),
            pollers: env.number("KIRIM_LOCAL_POLLERS", 2usize).max(1),
            clock: LocalClock::default(),
            read_cache_ttl: env.duration_at_most("KIRIM_READ_CACHE_TTL", Duration::ZERO, DAY),
            totp_kms_key: env.optional(kirim::wiring::TOTP_KMS_KEY_ENV),
            secret_cache_ttl: env.duration_at_most(
                "KIRIM_SECRET_CACHE_TTL",
                Duration::from_secs(5),
                DAY,
            ),
            settings,
        };
        env.finish()?;
        Ok(cfg)
    }
}

/// The secrets local mode runs with (generated when not configured).
#[derive(Clone, Debug)]
pub struct LocalSecrets {
    pub operator_token: Secret,
    pub meta_app_secret: Secret,
    pub meta_verify_token: Secret,
    /// Signs the audit chains' heads (always generated; nobody types it in).
    pub audit_key: Secret,
    /// Which of them were generated (and so must be shown to the user).
    pub generated: Vec<&'static str>,
}

pub struct LocalApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub deps: Deps,
    pub sandbox: Sandbox,
    pub secrets: LocalSecrets,
    /// The schedules (owed callbacks, retention, metrics): stopped by aborting.
    tasks: Vec<JoinHandle<()>>,
    /// The queue pollers: each ends after the batch it is handling once told to stop (on
    /// the memory backend, once the queue has no job ready, or a deadline passed).
    pollers: Vec<JoinHandle<()>>,
    stop_pollers: tokio::sync::watch::Sender<PollerStop>,
    /// Whether the queues live in this process (memory: what is left at exit is lost).
    queues_in_process: bool,
    /// Set once the stop begins: every request but the sandbox's and Meta's webhooks is
    /// answered `503`.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// The requests let through and not yet answered ([`RefusedWhileDraining`]).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The HTTP server: stops taking connections, and ends once its requests are answered.
    server: Option<JoinHandle<()>>,
    stop_server: tokio::sync::watch::Sender<bool>,
}

/// How long [`LocalApp::stop`] waits for each of its steps (the requests let through, the
/// pollers' batches, the server's last answers) before it goes on or aborts what is left: past the dispatcher's own 60 s bound on a batch
/// on Lambda is not needed here (a local batch waits on the in-process sandbox).
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// What the queue pollers are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PollerStop {
    Run,
    /// Finish the batch in hand and take no other (the queue keeps the rest: SQS).
    AfterBatch,
    /// Take batches until none is ready, but no new one after this instant (the queue is
    /// in this process: a job left in it is lost at exit).
    Drain(tokio::time::Instant),
}

impl PollerStop {
    /// Whether a poller may take another batch now.
    fn takes_a_batch(self) -> bool {
        match self {
            PollerStop::Run => true,
            PollerStop::AfterBatch => false,
            PollerStop::Drain(until) => tokio::time::Instant::now() < until,
        }
    }
}

impl LocalApp {
    /// Waits until the server stops (it runs until the process is stopped).
    pub async fn wait(mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// Runs until the server stops, or until the process is asked to stop (Ctrl-C, SIGINT or
    /// SIGTERM), and then stops as [`Self::stop`] does.
    pub async fn run_until_stopped(mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        tokio::select! {
            _ = &mut server => {}
            () = stop_asked() => {
                println!("kirim-local: stopping (new requests refused, the queues' batches in hand finished, then the server's requests)");
                self.server = Some(server);
                self.stop(STOP_GRACE).await;
            }
        }
    }

    /// Stops as a deployment would drain: the server answers every new request but the
    /// sandbox's and Meta's webhooks `503 unavailable` with `Retry-After` (so nothing is
    /// accepted that no poller will take; the sandbox is served here, and the pollers' Meta
    /// calls go through it), and the requests already let through are answered first (their
    /// jobs queued); then the queue pollers finish the batch in hand (a message claimed is sent or released,
    /// never left `sending` for its deadline) and take no other — on the memory backend,
    /// whose queues die with the process, they go on taking batches until no job is ready,
    /// for half the grace at most; then the server takes no new connection and answers the
    /// requests it has. Each waits at most `grace`, then what is left is aborted. What the
    /// Meta sandbox still owes (its status webhooks, its outbox) lives in this process and is
    /// lost with it, and so, on memory, are jobs waiting out a retry's delay.
    pub async fn stop(mut self, grace: Duration) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // The requests already let through answer first (their jobs queued), within the
        // grace: then the pollers' last look finds them.
        let answered = async {
            while self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(grace, answered).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "requests still open as the queues drain"
            );
        }
        let _ = self.stop_pollers.send(if self.queues_in_process {
            PollerStop::Drain(tokio::time::Instant::now() + grace / 2)
        } else {
            PollerStop::AfterBatch
        });
        let pollers = std::mem::take(&mut self.pollers);
        let aborts: Vec<_> = pollers.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(grace, futures::future::join_all(pollers))
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "queue pollers still busy at the stop: aborted"
            );
            for a in &aborts {
                a.abort();
            }
        }
        let _ = self.stop_server.send(true);
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(grace, server).await.is_err() {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "requests still open at the stop: aborted"
                );
                abort.abort();
            }
        }
    }
}

/// Ctrl-C / SIGINT, or SIGTERM (what `kill` and a container's stop send).
async fn stop_asked() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Once the stop has begun, every request but the sandbox's (the pollers' Meta calls, and
/// its inspection) is answered `503 unavailable` with `Retry-After`: a send accepted then
/// would be queued for pollers that take no more batches. (A service of its own rather than
/// a middleware: no box per request on the webhook's measured path.)
#[derive(Clone)]
struct RefusedWhileDraining<S> {
    inner: S,
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Requests let through and not yet answered (not the sandbox's): the stop waits for
    /// them before it lets the pollers drain, so a send answered `202` just as the stop
    /// began has its job in the queue before the pollers look for the last time.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// One request of [`RefusedWhileDraining::in_flight`], counted until it is answered (or
/// dropped).
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl<S> tower::Service<Request> for RefusedWhileDraining<S>
where
    S: tower::Service<
        Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<axum::response::Response, std::convert::Infallible>,
                > + Send,
        >,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The sandbox's calls (the pollers' Meta, its inspection) are served to the end and
        // not waited for: the pollers make them while the stop waits on the pollers.
        if req.uri().path().starts_with("/_sandbox/") {
            return Box::pin(self.inner.call(req));
        }
        // Counted before the flag is read (both SeqCst): a request the stop's count does
        // not see reads the flag set, and is refused.
        let counted = InFlight::enter(&self.in_flight);
        // Meta's webhooks are still applied (they queue no send; a status the sandbox owes
        // a message the pollers send while draining lands).
        if self.draining.load(std::sync::atomic::Ordering::SeqCst)
            && req.uri().path() != "/webhooks/meta"
        {
            drop(counted);
            // Through the request-id layer, as every answer: the contract's error body.
            let refuse = tower::service_fn(|_req: Request| async {
                let mut refused = kirim::http::error::ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "local mode is stopping; retry once it runs again",
                );
                refused.retry_after = Some(5);
                Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response(
                    refused,
                ))
            });
            let mut answered = tower::Layer::layer(&kirim::http::error::RequestIdLayer, refuse);
            return tower::Service::call(&mut answered, req);
        }
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answered = answer.await;
            drop(counted);
            answered
        })
    }
}

/// How long a poller's receive waits for a job (a stop is seen within it).
const POLL_WAIT: Duration = Duration::from_secs(1);

/// Resolves once `stop` holds `true` (or its sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Drop for LocalApp {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.pollers).chain(&self.server) {
            t.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error(transparent)]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
    #[error("secret store: {0}")]
    Secrets(String),
}

/// The SDK configuration for an emulator: its endpoint, and dummy credentials and a region
/// when none are configured (moto accepts any).
pub async fn emulator_sdk_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = kirim::wiring::aws_sdk_loader();
    if let Some(ep) = endpoint {
        loader = loader.endpoint_url(ep);
        if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "kirim-local",
            ));
        }
        if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
    }
    loader.load().await
}

fn secret_or_generate(
    given: &Option<String>,
    label: &'static str,
    prefix: &str,
    generated: &mut Vec<&'static str>,
) -> Secret {
    match given {
        Some(v) => Secret::new(v.clone()),
        None => {
            generated.push(label);
            Secret::generate(prefix)
        }
    }
}

/// The client address is the TCP peer locally (API.md). A plain request mapping around the
/// whole router, not a middleware on each of its routes (no boxing per request).
fn client_ip_from_peer(mut req: Request) -> Request {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    req.extensions_mut().insert(ClientIp(ip));
    req
}

/// Serves each request to its end, as Lambda runs every invocation to its end: hyper drops a
/// request's future when its client hangs up, which would cancel a write half made (a
/// send's audit event after its message was recorded). A request's future dropped before
/// it finished goes on in a task of its own ([`ServedToEnd`]), with the request's own scope
/// (its id on every line and queued job): the whole request, layers included, is that
/// future. A request served to its end costs nothing more than the box it is polled in.
#[derive(Clone)]
struct ToCompletion<S>(S);

impl<S> tower::Service<Request> for ToCompletion<S>
where
    S: tower::Service<
            Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = ServedToEnd<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        ServedToEnd(Some(Box::pin(self.0.call(req))))
    }
}

/// A request's future that, dropped before it finished (its client gone), is finished in a
/// task of its own instead of cancelled.
struct ServedToEnd<F: std::future::Future + Send + 'static>(Option<std::pin::Pin<Box<F>>>);

impl<F: std::future::Future + Send + 'static> std::future::Future for ServedToEnd<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(fut) = self.0.as_mut() else {
            // Answered already: never polled again by hyper.
            return std::task::Poll::Pending;
        };
        let answer = fut.as_mut().poll(cx);
        if answer.is_ready() {
            self.0 = None;
        }
        answer
    }
}

impl<F: std::future::Future + Send + 'static> Drop for ServedToEnd<F> {
    fn drop(&mut self) {
        // Dropped while its handler panics: nothing left to finish (polled again, the
        // future would only panic again).
        if std::thread::panicking() {
            return;
        }
        if let Some(rest) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                tracing::debug!("the client left before its answer; the request goes on");
                runtime.spawn(async move {
                    let _ = rest.await;
                });
            }
        }
    }
}

/// Starts local mode and answers once it is serving.
pub async fn start(cfg: LocalConfig) -> Result<LocalApp, LocalError> {
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| LocalError::Bind(cfg.listen.clone(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| LocalError::Bind(cfg.listen.clone(), e))?;
    let base_url = format!("http://{addr}");
    if !addr.ip().is_loopback() {
        // Local mode speaks plain http: session cookies (bearer tokens for 12 hours) and the
        // sign-in's sealed password cookie cross the network in clear from here.
        tracing::warn!(
            %addr,
            "local mode listens beyond loopback over plain http: console sessions and API \
             keys cross the network unencrypted; put TLS in front or keep KIRIM_LISTEN on 127.0.0.1"
        );
    }

    let mut generated = Vec::new();
    let secrets = LocalSecrets {
        operator_token: secret_or_generate(
            &cfg.operator_token,
            "KIRIM_OPERATOR_TOKEN",
            "op_",
            &mut generated,
        ),
        meta_app_secret: secret_or_generate(
            &cfg.meta_app_secret,
            "KIRIM_META_APP_SECRET",
            "",
            &mut generated,
        ),
        meta_verify_token: secret_or_generate(
            &cfg.meta_verify_token,
            "KIRIM_META_VERIFY_TOKEN",
            "",
            &mut generated,
        ),
        audit_key: Secret::generate(""),
        generated,
    };

    let mut settings = cfg.settings.clone();
    settings.meta_base_url = cfg
        .meta_base_url
        .clone()
        .unwrap_or_else(|| format!("{base_url}/_sandbox/graph"));
    let clock: Arc<dyn Clock> = cfg.clock.0.clone();
    let deps = match cfg.backend {
        Backend::Memory => Deps::new(memory_backends(settings, clock)?),
        Backend::Aws => {
            let sdk = emulator_sdk_config(cfg.aws_endpoint.as_deref()).await;
            let stack = ensure_stack(&sdk, &cfg.stack_name).await?;
            // Local mode is every function at once: it uses every queue.
            let queue = |logical: &str, dlq: &str| {
                stack.queue_url(logical).map(|url| QueueUrls {
                    url,
                    dlq_url: stack.queue_url(dlq),
                })
            };
            let res = AwsResources {
                table: stack.table.clone(),
                dispatch_queue: queue("DispatchQueue", "DispatchDeadLetterQueue"),
                status_callback_queue: queue(
                    "StatusCallbackQueue",
                    "StatusCallbackDeadLetterQueue",
                ),
                // The emulator's KMS key, unless one is named (`KIRIM_TOTP_KMS_KEY`).
                totp_kms_key: cfg
                    .totp_kms_key
                    .clone()
                    .or_else(|| stack.kms_keys.get("TotpSeedKey").cloned()),
            };
            // Secret names as the template declares them.
            let name = |logical: &str, fallback: &str| {
                stack
                    .secrets
                    .get(logical)
                    .cloned()
                    .unwrap_or_else(|| fallback.to_owned())
            };
            settings.operator_token_secret =
                name("OperatorTokenSecret", &settings.operator_token_secret);
            settings.meta_app_secret = name("MetaAppSecret", &settings.meta_app_secret);
            settings.meta_verify_token_secret =
                name("MetaVerifyTokenSecret", &settings.meta_verify_token_secret);
            settings.audit_key_secret = name("AuditKeySecret", &settings.audit_key_secret);
            settings.secret_prefix = format!("{}/", cfg.stack_name);
            let meta = meta_client(&settings)?;
            Deps::new(aws_backends(
                &sdk,
                "local mode",
                &res,
                meta,
                settings,
                clock,
                kirim::wiring::CacheTtls {
                    secrets: cfg.secret_cache_ttl,
                    reads: cfg.read_cache_ttl,
                },
            ))
        }
    };
    let s = &deps.settings;
    for (name, value) in [
        (&s.operator_token_secret, &secrets.operator_token),
        (&s.meta_app_secret, &secrets.meta_app_secret),
        (&s.meta_verify_token_secret, &secrets.meta_verify_token),
    ] {
        deps.secrets
            .put(name, value)
            .await
            .map_err(|e| LocalError::Secrets(e.to_string()))?;
    }
    // The audit key is kept across restarts on a persistent emulator: a new one each start
    // would leave the chains' heads signed by a key no longer known.
    let existing = deps
        .secrets
        .current(&s.audit_key_secret)
        .await
        .map_err(|e| LocalError::Secrets(e.to_string()))?;
    if existing.is_none() {
        deps.secrets
            .put(&s.audit_key_secret, &secrets.audit_key)
            .await
            .map_err(|e| LocalError::Secrets(e.to_string()))?;
    }

    let mut sb_cfg = SandboxConfig::new(secrets.meta_app_secret.expose(), "100000000000001");
    sb_cfg.webhook_url = Some(format!("{base_url}/webhooks/meta"));
    sb_cfg.status_delay = cfg.sandbox_status_delay;
    sb_cfg.slow_delay = cfg.sandbox_slow_delay;
    sb_cfg.rate_limit_per_sec = cfg.sandbox_rate_limit;
    let sandbox = Sandbox::new(sb_cfg);

    // The key that sealed TOTP seeds before KMS (`v1:`; on AWS: the template's
    // TotpKeySecret), kept if set: `v1:` seeds still open with it, to be resealed.
    let totp_key = kirim::service::seed_cipher::key_name(&deps.settings);
    if !matches!(deps.secrets.current(&totp_key).await, Ok(Some(_))) {
        deps.secrets
            .put(&totp_key, &Secret::generate(""))
            .await
            .map_err(|e| LocalError::Secrets(e.to_string()))?;
    }

    // The console's CSRF key (on AWS: the template's ConsoleCsrfKeySecret), kept if set.
    let csrf_key = kirim::console::csrf_key_name(&deps.settings);
    if !matches!(deps.secrets.current(&csrf_key).await, Ok(Some(_))) {
        deps.secrets
            .put(&csrf_key, &Secret::generate(""))
            .await
            .map_err(|e| LocalError::Secrets(e.to_string()))?;
    }
    let console = kirim::console::console_router(
        deps.clone(),
        kirim::console::ConsoleOptions {
            // Local mode is plain http on loopback.
            secure_cookies: false,
        },
    );
    // The sandbox's routes only while it is the Meta this process talks to: they sign
    // webhooks with the app secret for anyone who calls them (an inbound STOP, a template's
    // status), and list every message sent, so with a real Meta they are not served.
    let sandbox_routes = if cfg.meta_base_url.is_none() {
        Router::new()
            .nest("/_sandbox/graph", sandbox.graph_router())
            .merge(sandbox.inspect_router())
            .merge(console)
    } else {
        console
    };
    // Served as it is: Meta's notifications are answered before any route lookup.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let router = RefusedWhileDraining {
        inner: kirim::http::app(deps.clone(), sandbox_routes),
        draining: draining.clone(),
        in_flight: in_flight.clone(),
    };

    let mut tasks = Vec::new();
    let (stop_pollers, stop_rx) = tokio::sync::watch::channel(PollerStop::Run);
    let mut pollers = Vec::new();
    for _ in 0..cfg.pollers {
        let d = deps.clone();
        let stop = stop_rx.clone();
        pollers.push(tokio::spawn(async move {
            loop {
                let now = *stop.borrow();
                if !now.takes_a_batch() {
                    break;
                }
                let taken = kirim::queue_handlers::poll_once(&d, POLL_WAIT).await;
                if taken == 0 && now != PollerStop::Run {
                    break; // draining, and nothing was ready
                }
            }
        }));
    }
    // One poller delivers status callbacks (one at a time per batch keeps them in order).
    let d = deps.clone();
    pollers.push(tokio::spawn(async move {
        loop {
            let now = *stop_rx.borrow();
            if !now.takes_a_batch() {
                break;
            }
            let taken = kirim::queue_handlers::poll_callbacks_once(&d, POLL_WAIT).await;
            if taken == 0 && now != PollerStop::Run {
                break;
            }
        }
    }));
    // Status callbacks the queue refused, queued again, and the audited calls whose
    // process died recorded as interrupted (on AWS, a one-minute schedule).
    let d = deps.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(OWED_CALLBACKS_EVERY);
        loop {
            tick.tick().await;
            kirim::queue_handlers::every_minute(&d).await;
        }
    }));
    let d = deps.clone();
    let every = cfg.retention_interval;
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await; // the first tick is immediate: skip it
        loop {
            tick.tick().await;
            if let Err(e) = kirim::queue_handlers::scheduled_retention(&d).await {
                tracing::error!(error = %e, "scheduled retention failed");
            }
        }
    }));
    // Metric lines leave in one write every 200 ms, as a Lambda's leave when it ends.
    tasks.push(tokio::spawn(kirim::metrics::flush_every(
        kirim::metrics::FLUSH_EVERY,
    )));
    let (stop_server, server_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let svc = axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(
            ToCompletion(tower::ServiceExt::<Request>::map_request(
                router,
                client_ip_from_peer,
            )),
        );
        if let Err(e) = axum::serve(listener, svc)
            .with_graceful_shutdown(stopped(server_rx))
            .await
        {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(LocalApp {
        addr,
        base_url,
        deps,
        sandbox,
        secrets,
        tasks,
        pollers,
        stop_pollers,
        queues_in_process: matches!(cfg.backend, Backend::Memory),
        draining,
        in_flight,
        server: Some(server),
        stop_server,
    })
}

#[cfg(test)]
mod to_completion_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_request_whose_client_hung_up_is_still_served_to_its_end() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let slow = tower::service_fn(move |_req: Request| {
            let flag = flag.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                flag.store(true, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(axum::response::Response::new(
                    axum::body::Body::empty(),
                ))
            }
        });
        let mut svc = ToCompletion(slow);
        let req = Request::new(axum::body::Body::empty());
        let answer = tower::Service::call(&mut svc, req);
        // The client hangs up: hyper drops the answer's future.
        let hung_up = tokio::time::timeout(Duration::from_millis(5), answer).await;
        assert!(hung_up.is_err(), "still serving");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(done.load(Ordering::SeqCst), "served to its end");
        // A client that waits gets its answer as before.
        done.store(false, Ordering::SeqCst);
        let answer = tower::Service::call(&mut svc, Request::new(axum::body::Body::empty())).await;
        assert!(answer.is_ok() && done.load(Ordering::SeqCst));
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<LocalConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        LocalConfig::from_lookup(move |k| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn a_zero_retention_interval_is_refused_at_start_not_left_to_panic_the_cleanup_task() {
        let err = with(&[("KIRIM_RETENTION_INTERVAL", "0s")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("KIRIM_RETENTION_INTERVAL=0s"), "{err}");
        let ok = with(&[("KIRIM_RETENTION_INTERVAL", "90s")]).map(|c| c.retention_interval);
        assert_eq!(ok.ok(), Some(Duration::from_secs(90)));
        // Nor one the timer cannot add to now (it would panic on the first tick).
        let err = with(&[("KIRIM_RETENTION_INTERVAL", "10000000000000000000")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("must be at most"), "{err}");
    }

    /// A test walking every route without credentials from loopback is answered each
    /// route's refusal, not the address's 429: local mode's allowance is raised unless set.
    #[test]
    fn local_mode_raises_the_refused_credentials_allowance_unless_set() {
        let raised = with(&[]).map(|c| c.settings.limits.bad_credentials);
        assert_eq!(raised.ok(), Some(LOCAL_BAD_CREDENTIALS));
        let set = with(&[("KIRIM_LIMIT_BAD_CREDENTIALS", "5")])
            .map(|c| c.settings.limits.bad_credentials);
        assert_eq!(set.ok(), Some(5));
    }

    /// API.md: retention periods are configuration. Local mode takes short ones (a test
    /// watching data expire), a key's default memory following the messages'; a deployment
    /// keeps its floors (`Settings` read without `allowing_short_retention`).
    #[test]
    fn local_mode_takes_short_retention_periods_a_deployment_refuses() {
        let short = [
            ("KIRIM_RETENTION_MESSAGES", "3s"),
            ("KIRIM_RETENTION_AUDIT", "5s"),
            ("KIRIM_RETENTION_BILLING", "7s"),
        ];
        let r = with(&short).map(|c| c.settings.retention);
        let r = r.expect("local mode starts");
        assert_eq!(
            (r.messages, r.audit, r.billing, r.idempotency),
            (
                Duration::from_secs(3),
                Duration::from_secs(5),
                Duration::from_secs(7),
                Duration::from_secs(3)
            )
        );
        // A key's memory set longer than the messages' is still refused.
        let err = with(&[
            ("KIRIM_RETENTION_MESSAGES", "3s"),
            ("KIRIM_RETENTION_IDEMPOTENCY", "1d"),
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("KIRIM_RETENTION_IDEMPOTENCY"), "{err}");
        // Nothing is kept for no time at all.
        assert!(with(&[("KIRIM_RETENTION_MESSAGES", "0s")]).is_err());
        // A deployment's reading keeps the floors.
        let mut strict = kirim::config::EnvReader::new(|k: &str| {
            short
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        });
        let _ = strict.settings();
        let problems = strict
            .finish()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for name in [
            "KIRIM_RETENTION_MESSAGES",
            "KIRIM_RETENTION_AUDIT",
            "KIRIM_RETENTION_BILLING",
        ] {
            assert!(problems.contains(name), "{name}: {problems}");
        }
    }

    #[test]
    fn a_meta_base_url_is_used_as_checked_trimmed_and_without_its_trailing_slash() {
        let cfg =
            with(&[("KIRIM_META_BASE_URL", "http://127.0.0.1:3001/ ")]).map(|c| c.meta_base_url);
        assert_eq!(cfg.ok().flatten().as_deref(), Some("http://127.0.0.1:3001"));
        let sandbox = with(&[]).map(|c| c.meta_base_url);
        assert_eq!(sandbox.ok(), Some(None), "unset: the embedded sandbox");
    }

    #[test]
    fn a_cache_time_beyond_a_day_is_refused_at_start_not_left_to_panic_a_cached_read() {
        for name in ["KIRIM_READ_CACHE_TTL", "KIRIM_SECRET_CACHE_TTL"] {
            let err = with(&[(name, "100000000d")])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(&format!("{name}=100000000d")), "{err}");
            assert!(with(&[(name, "1d")]).is_ok(), "{name}");
        }
    }
}
