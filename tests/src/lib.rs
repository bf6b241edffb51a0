//! Test support: the moto emulator, a manual clock, and a local-mode app per test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kirim::config::{Backend, Settings};
use kirim::ports::Clock;
use kirim_infra::local::{start, LocalApp, LocalConfig};
use tokio::sync::OnceCell;

pub mod doubles;

pub const OPERATOR_TOKEN: &str = "op_test_operator_token";

/// A clock tests move by hand.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Utc::now())))
    }
    pub fn advance(&self, by: chrono::Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += by;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().map(|t| *t).unwrap_or_else(|_| Utc::now())
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

static MOTO: OnceCell<String> = OnceCell::const_new();
static MOTO_AUTH: OnceCell<String> = OnceCell::const_new();

/// The moto endpoint: `KIRIM_TEST_MOTO_URL` (the test command starts moto and sets it),
/// or a moto server started from the project's `.venv` for this test process.
pub async fn moto_endpoint() -> String {
    MOTO.get_or_init(|| own_moto("KIRIM_TEST_MOTO_URL"))
        .await
        .clone()
}

/// A second moto server, for the tests that turn on its IAM authentication (moto then
/// checks every request's SigV4 signature and its caller's policy, for every client of that
/// server: never the shared one). `KIRIM_TEST_MOTO_AUTH_URL`, or one started for this test
/// process.
pub async fn moto_auth_endpoint() -> String {
    MOTO_AUTH
        .get_or_init(|| own_moto("KIRIM_TEST_MOTO_AUTH_URL"))
        .await
        .clone()
}

/// `var`'s moto server, or one started from the project's `.venv`, stopped when this test
/// process ends.
async fn own_moto(var: &str) -> String {
    if let Ok(url) = std::env::var(var) {
        return url;
    }
    let python = workspace_root().join(".venv/bin/python");
    let launcher = workspace_root().join("scripts/moto_server.py");
    assert!(
        python.exists(),
        "moto is not installed: run ./scripts/test (it installs moto into .venv), \
         or set {var} to a running moto server"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    // The wrapper stops moto when this test process ends.
    let script = format!(
        "{} {} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {} 2>/dev/null; do sleep 1; done; kill $m",
        python.display(),
        launcher.display(),
        std::process::id()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .spawn()
        .expect("start moto");
    // Reap the wrapper when it ends, so it never lingers as a zombie.
    std::thread::spawn(move || child.wait());
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{url}/moto-api/")).await.is_ok() {
            return url;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto did not start on {url}");
}

/// SDK configuration pointing at moto.
pub async fn moto_sdk() -> aws_config::SdkConfig {
    let ep = moto_endpoint().await;
    kirim_infra::local::emulator_sdk_config(Some(&ep)).await
}

/// How long the polling helpers ([`TestApp::wait_status`], [`TestApp::credits_settled`])
/// wait for what the queue pollers, the sandbox and its webhooks settle: a deadline, not a
/// speed assertion (each returns as soon as it sees its answer). The official CI runs every
/// test at once on two cores and one moto, where the 15 s (a refund's 5 s) these once
/// allowed left little room for a send's tries, backoffs and statuses.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// A unique stack name, so parallel tests never share a table or queue.
pub fn unique_stack() -> String {
    format!("t{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Fast settings for tests: short backoff, few attempts, a short Meta timeout.
pub fn test_settings() -> Settings {
    Settings {
        dispatch_max_attempts: 3,
        dispatch_backoff: Duration::from_millis(50),
        meta_timeout: Duration::from_millis(700),
        // Local mode's status callbacks: loopback receivers, quick retries.
        callbacks_allow_private: true,
        callback_backoff: Duration::from_millis(100),
        callback_timeout: Duration::from_secs(2),
        // A scheduled job comes back to ask the (manual) clock every 200 ms, not 15 min.
        schedule_hop: Duration::from_millis(200),
        // Tests that build deps without local mode never reach the real Meta: nothing
        // listens on the discard port, so a template sync at onboarding fails at once.
        meta_base_url: "http://127.0.0.1:9".into(),
        ..Settings::default()
    }
}

pub async fn local_config(backend: Backend) -> LocalConfig {
    let aws_endpoint = match backend {
        Backend::Aws => Some(moto_endpoint().await),
        Backend::Memory => None,
    };
    LocalConfig {
        listen: "127.0.0.1:0".into(),
        backend,
        aws_endpoint,
        stack_name: unique_stack(),
        operator_token: Some(OPERATOR_TOKEN.into()),
        meta_app_secret: Some(META_APP_SECRET.into()),
        meta_verify_token: Some("test-verify-token".into()),
        meta_base_url: None,
        settings: test_settings(),
        sandbox_status_delay: Duration::from_millis(20),
        sandbox_slow_delay: Duration::from_millis(1500),
        sandbox_rate_limit: 80,
        retention_interval: Duration::from_secs(3600),
        pollers: 2,
        clock: Default::default(),
        read_cache_ttl: Duration::ZERO,
        secret_cache_ttl: Duration::from_secs(5),
        totp_kms_key: None,
    }
}

/// Local mode on `backend`, serving on a free port.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_with(local_config(backend).await).await
}

/// Local mode with a test's own configuration (start from [`local_config`]).
pub async fn spawn_with(cfg: LocalConfig) -> TestApp {
    capture_logs();
    let stack = cfg.stack_name.clone();
    let app = start(cfg).await.expect("local mode starts");
    TestApp {
        http: reqwest::Client::new(),
        app,
        stack,
    }
}

pub struct TestApp {
    pub http: reqwest::Client,
    pub app: LocalApp,
    /// The emulator stack's name (aws backend): its table is `{stack}-Table`.
    pub stack: String,
}

pub struct Onboarded {
    pub tenant_id: String,
    pub key: String,
    pub phone_number_id: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.base_url)
    }

    pub async fn onboard(&self, credits: i64) -> Onboarded {
        let pnid = format!("{}", 100_000 + rand_u32() % 900_000);
        let res = self
            .http
            .post(self.url("/v1/platform/tenants"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&serde_json::json!({
                "name": "Kedai Runcit Sdn Bhd",
                "waba_id": "1000001",
                "phone_number_id": pnid,
                "meta_access_token": "EAAG-test-meta-token",
                "credits": credits,
            }))
            .send()
            .await
            .expect("onboard request");
        assert_eq!(res.status(), 201, "onboarding answers 201");
        let body: serde_json::Value = res.json().await.expect("json");
        Onboarded {
            tenant_id: body["tenant"]["id"].as_str().unwrap_or_default().to_owned(),
            key: body["admin_api_key"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            phone_number_id: pnid,
        }
    }

    pub async fn send_template(&self, key: &str, to: &str) -> reqwest::Response {
        self.http
            .post(self.url("/v1/messages"))
            .bearer_auth(key)
            .json(&serde_json::json!({
                "to": to,
                "template": {
                    "name": "order_update",
                    "language": "en_US",
                    "category": "utility",
                    "components": [{"type": "body", "parameters": [{"type": "text", "text": "ORDER-42"}]}],
                },
                "client_reference": "order-42",
            }))
            .send()
            .await
            .expect("send request")
    }

    /// Sends and answers the new message's id (asserting 202).
    pub async fn send_ok(&self, key: &str, to: &str) -> String {
        let res = self.send_template(key, to).await;
        assert_eq!(res.status(), 202);
        let body: serde_json::Value = res.json().await.expect("json");
        assert_eq!(body["status"], "accepted");
        body["id"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn message(&self, key: &str, id: &str) -> serde_json::Value {
        self.http
            .get(self.url(&format!("/v1/messages/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("get message")
            .json()
            .await
            .expect("json")
    }

    pub async fn credits(&self, key: &str) -> i64 {
        let body: serde_json::Value = self
            .http
            .get(self.url("/v1/account"))
            .bearer_auth(key)
            .send()
            .await
            .expect("account")
            .json()
            .await
            .expect("json");
        body["credits"].as_i64().unwrap_or(-1)
    }

    /// The balance once it equals `want` (or the last one seen after a deadline): a refund
    /// is written just after its message turns `failed`, so tests wait for it.
    pub async fn credits_settled(&self, key: &str, want: i64) -> i64 {
        let deadline = std::time::Instant::now() + SETTLE_DEADLINE;
        let mut last = self.credits(key).await;
        while last != want && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = self.credits(key).await;
        }
        last
    }

    /// Polls until the message's status is `want` (or the deadline passes) and answers
    /// the last view. A deadline, not a speed assertion: the check that follows decides.
    pub async fn wait_status(&self, key: &str, id: &str, want: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + SETTLE_DEADLINE;
        loop {
            let last = self.message(key, id).await;
            if last["status"] == want || std::time::Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Requests the sandbox received for one recipient (digits without `+`).
    pub fn sandbox_requests_to(&self, digits: &str) -> Vec<kirim_infra::sandbox::ReceivedRequest> {
        self.app
            .sandbox
            .received()
            .into_iter()
            .filter(|r| r.request["to"] == digits)
            .collect()
    }
}

/// An approved utility template of no parameters in a WABA's catalogue, as a sync writes
/// one (tests put it there directly: no Meta to sync from).
pub fn approved_template(
    waba_id: &str,
    name: &str,
    language: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> kirim::ports::CatalogueTemplate {
    kirim::ports::CatalogueTemplate {
        waba_id: waba_id.to_owned(),
        name: name.to_owned(),
        language: language.to_owned(),
        category: kirim::domain::TemplateCategory::Utility,
        status: kirim::domain::TemplateStatus::Approved,
        quality: kirim::domain::TemplateQuality::Green,
        body_parameters: 0,
        meta_id: None,
        updated_at: at,
        expires_at: None,
    }
}

/// A template of the sandbox's catalogue for each category (each takes one body
/// parameter), as a send's `template` object with its category given.
pub fn template_of(category: &str) -> serde_json::Value {
    let name = match category {
        "marketing" => "promo_sale",
        "authentication" => "login_code",
        _ => "order_update",
    };
    serde_json::json!({"name": name, "language": "en_US", "category": category,
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "P-1"}]}]})
}

impl TestApp {
    /// Changes one template of the sandbox's catalogue (which sends Meta's signed webhook
    /// to the platform before it answers) and answers the sandbox's answer.
    pub async fn sandbox_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
        change: serde_json::Value,
    ) -> serde_json::Value {
        let res = self
            .http
            .put(self.url(&format!("/_sandbox/templates/{waba_id}/{name}/{language}")))
            .json(&change)
            .send()
            .await
            .expect("sandbox template change");
        assert_eq!(res.status(), 200, "the sandbox changed the template");
        let body: serde_json::Value = res.json().await.expect("json");
        assert!(
            body["webhooks"]
                .as_array()
                .is_some_and(|h| h.iter().all(|w| w["delivered"] == true)),
            "the platform took the webhooks: {body}"
        );
        body
    }
}

pub fn rand_u32() -> u32 {
    let u = ulid::Ulid::new().random();
    (u & 0xffff_ffff) as u32
}

/// Every log line this test process writes (all tests share it), as JSON lines, so
/// tests can prove what never reaches a log.
static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (debug for Kirim's crates) once per process: the
/// formatter wrapped as Lambda and local mode wrap theirs (`telemetry::LazySpanFields`:
/// a request span's fields wait for a line), so the tests of what lines carry are tests
/// of that too.
pub fn capture_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::registry()
            .with(kirim::telemetry::LazySpanFields::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || LogSink(sink.clone())),
            ))
            .with(tracing_subscriber::EnvFilter::new(
                "info,kirim=debug,kirim_infra=debug",
            ))
            .try_init();
        buf
    });
}

/// Everything logged so far by this process.
pub fn captured_logs() -> String {
    LOGS.get()
        .and_then(|b| {
            b.lock()
                .ok()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        })
        .unwrap_or_default()
}

/// The app secret local mode runs with in tests.
pub const META_APP_SECRET: &str = "test-app-secret";

/// `X-Hub-Signature-256` for `body` under `secret`, as Meta computes it.
pub fn sign_with(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl TestApp {
    /// The user `to` (E.164) writes to the tenant's number now, through the sandbox's
    /// signed inbound webhook: their 24-hour customer-service window opens, so session
    /// texts to them are allowed.
    pub async fn user_wrote(&self, phone_number_id: &str, to: &str) {
        self.sandbox_inbound(
            serde_json::json!({"phone_number_id": phone_number_id, "from": to, "text": "Hi"}),
        )
        .await;
    }

    /// `POST /_sandbox/inbound` (`{"phone_number_id","from"?,"user_id"?,"text"?|"button"?}`):
    /// the sandbox sends Meta's signed inbound webhook; asserts the platform took it.
    pub async fn sandbox_inbound(&self, body: serde_json::Value) {
        let res = self
            .http
            .post(self.url("/_sandbox/inbound"))
            .json(&body)
            .send()
            .await
            .expect("sandbox inbound request");
        assert_eq!(res.status(), 200);
        let body: serde_json::Value = res.json().await.expect("json");
        assert_eq!(
            body["delivered"], true,
            "the platform took the inbound webhook"
        );
    }

    /// POSTs a notification to the Meta webhook, correctly signed.
    pub async fn post_webhook(&self, body: &serde_json::Value) -> reqwest::Response {
        let raw = body.to_string();
        self.http
            .post(self.url("/webhooks/meta"))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                sign_with(META_APP_SECRET, raw.as_bytes()),
            )
            .body(raw)
            .send()
            .await
            .expect("webhook request")
    }
}

/// Which secrets a [`ScriptedSecrets`] refuses (as Secrets Manager throttled or denied).
#[derive(Clone, Debug, Default)]
pub enum Refuse {
    #[default]
    Nothing,
    Every,
    /// Names that contain this.
    Containing(String),
}

impl Refuse {
    fn refuses(&self, name: &str) -> Result<(), kirim::store_error::StoreError> {
        let refused = match self {
            Refuse::Nothing => false,
            Refuse::Every => true,
            Refuse::Containing(part) => name.contains(part.as_str()),
        };
        if refused {
            return Err(kirim::store_error::StoreError::Unavailable(
                "secrets manager: ThrottlingException".into(),
            ));
        }
        Ok(())
    }
}

/// A secret store over `inner` whose reads or deletes of the named secrets fail, and which
/// counts reads of current versions: one stand-in for the tests' unreadable or undeletable
/// secrets.
pub struct ScriptedSecrets {
    pub inner: Arc<dyn kirim::ports::SecretStore>,
    pub reads: Refuse,
    pub deletes: Refuse,
    /// Listings whose prefix it refuses.
    pub lists: Refuse,
    /// Reads of current versions (`get_secret`) so far.
    pub read_count: std::sync::atomic::AtomicUsize,
}

impl ScriptedSecrets {
    pub fn over(inner: Arc<dyn kirim::ports::SecretStore>) -> Self {
        Self {
            inner,
            reads: Refuse::Nothing,
            deletes: Refuse::Nothing,
            lists: Refuse::Nothing,
            read_count: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl kirim::ports::SecretStore for ScriptedSecrets {
    async fn put_secret(
        &self,
        name: &str,
        value: &kirim::secret::Secret,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.inner.put_secret(name, value).await
    }
    async fn get_secret(
        &self,
        name: &str,
    ) -> Result<Option<kirim::secret::Secret>, kirim::store_error::StoreError> {
        self.read_count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.reads.refuses(name)?;
        self.inner.get_secret(name).await
    }
    async fn get_previous_secret(
        &self,
        name: &str,
    ) -> Result<Option<kirim::secret::Secret>, kirim::store_error::StoreError> {
        self.reads.refuses(name)?;
        self.inner.get_previous_secret(name).await
    }
    async fn rotated_at(
        &self,
        name: &str,
    ) -> Result<Option<DateTime<Utc>>, kirim::store_error::StoreError> {
        self.reads.refuses(name)?;
        self.inner.rotated_at(name).await
    }
    async fn delete_secret(&self, name: &str) -> Result<(), kirim::store_error::StoreError> {
        self.deletes.refuses(name)?;
        self.inner.delete_secret(name).await
    }
    async fn replace_secret(
        &self,
        name: &str,
        value: &kirim::secret::Secret,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.inner.replace_secret(name, value).await
    }
    async fn stage_secret(
        &self,
        name: &str,
        value: &kirim::secret::Secret,
    ) -> Result<String, kirim::store_error::StoreError> {
        self.inner.stage_secret(name, value).await
    }
    async fn promote_secret(
        &self,
        name: &str,
        version: &str,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.inner.promote_secret(name, version).await
    }
    async fn get_secret_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<kirim::secret::Secret>, kirim::store_error::StoreError> {
        self.read_count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.reads.refuses(name)?;
        self.inner.get_secret_version(name, version).await
    }
    async fn list_secrets(
        &self,
        prefix: &str,
        page: Option<&str>,
        limit: usize,
    ) -> Result<kirim::ports::SecretPage, kirim::store_error::StoreError> {
        self.lists.refuses(prefix)?;
        self.inner.list_secrets(prefix, page, limit).await
    }
}
