//! Each Lambda gets only the ports `wiring::Function::uses` declares (the rest refuse,
//! as `NotWired`), and only the secrets its IAM grants cover (`Granted`: moto's policy
//! allows everything, so this is where a missing `GetSecretValue` shows). A message
//! travels through the functions wired exactly so, over one memory backend: if a function
//! needed a port or a secret it is not given, a step fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kirim::adapters::aws::SecretsManagerStore;
use kirim::adapters::memory::{MemoryQueue, MemorySecrets, MemoryStore};
use kirim::domain::MessageStatus;
use kirim::iam::Resource;
use kirim::ports::{DispatchQueue, MetaAccepted, MetaClient, MetaSendError, SecretStore};
use kirim::secret::Secret;
use kirim::service::dispatch;
use kirim::service::jobs::Outcome;
use kirim::service::{accounts, callbacks, send, webhook, Backends, Deps};
use kirim::store_error::StoreError;
use kirim::wiring::{Function, NotWired, Port};
use kirim_tests::{test_settings, ManualClock};
use serde_json::{json, Value};

/// Meta, accepting every message with one wamid.
struct FixedWamid(String);

#[async_trait]
impl MetaClient for FixedWamid {
    async fn send_message(
        &self,
        _phone_number_id: &str,
        _token: &Secret,
        _body: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Ok(MetaAccepted {
            wamid: self.0.clone(),
        })
    }
    async fn list_templates(
        &self,
        _waba_id: &str,
        _token: &Secret,
        _after: Option<&str>,
    ) -> Result<kirim::domain::template::MetaTemplatePage, MetaSendError> {
        Ok(Default::default())
    }
}

/// The secret store as a function's role sees it on AWS: a call on a secret its grants
/// (`iam::Function::needs`, which `template.yaml` must match) do not cover is refused, as
/// Secrets Manager's AccessDenied would be (`Misconfigured`). moto grants everything.
struct Granted {
    inner: Arc<MemorySecrets>,
    function: Function,
    prefix: String,
}

impl Granted {
    /// The resources a grant on any of which covers the secret `name`.
    fn resources(&self, name: &str) -> Vec<Resource> {
        let rest = name.strip_prefix(&self.prefix).unwrap_or(name);
        if let Some(tenant_secret) = rest.strip_prefix("tenants/") {
            let mut out = vec![Resource::TenantSecrets];
            if tenant_secret.ends_with("/meta-token") {
                out.push(Resource::MetaTokens);
            } else if tenant_secret.ends_with("/status-callback-secret") {
                out.push(Resource::CallbackSecrets);
            }
            return out;
        }
        match rest {
            "audit-key" => vec![Resource::AuditKey],
            "operator-token" => vec![Resource::OperatorToken],
            "meta-app-secret" => vec![Resource::MetaAppSecret],
            "meta-verify-token" => vec![Resource::MetaVerifyToken],
            "console-csrf-key" => vec![Resource::ConsoleCsrfKey],
            "totp-key" => vec![Resource::TotpKey],
            other => panic!("a secret no grant names: {other}"),
        }
    }

    fn check(&self, name: &str, actions: &[&str]) -> Result<(), StoreError> {
        let needs = self.function.needs();
        let granted = self.resources(name).iter().any(|r| {
            needs
                .get(r)
                .is_some_and(|a| actions.iter().all(|x| a.contains(x)))
        });
        if granted {
            Ok(())
        } else {
            Err(StoreError::Misconfigured(format!(
                "{} may not {actions:?} on {name}",
                self.function.name()
            )))
        }
    }
}

#[async_trait]
impl SecretStore for Granted {
    async fn put_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        self.check(name, SecretsManagerStore::WRITE)?;
        self.inner.put_secret(name, value).await
    }
    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.check(name, SecretsManagerStore::READ)?;
        self.inner.get_secret(name).await
    }
    async fn get_previous_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.check(name, SecretsManagerStore::READ)?;
        self.inner.get_previous_secret(name).await
    }
    async fn rotated_at(
        &self,
        name: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        self.check(name, SecretsManagerStore::READ)?;
        self.inner.rotated_at(name).await
    }
    async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        self.check(name, SecretsManagerStore::DELETE)?;
        self.inner.delete_secret(name).await
    }
    async fn replace_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        self.check(name, SecretsManagerStore::RESTORE)?;
        self.check(name, SecretsManagerStore::WRITE)?;
        self.inner.replace_secret(name, value).await
    }
    async fn stage_secret(&self, name: &str, value: &Secret) -> Result<String, StoreError> {
        self.check(name, SecretsManagerStore::WRITE)?;
        self.inner.stage_secret(name, value).await
    }
    async fn promote_secret(&self, name: &str, version: &str) -> Result<(), StoreError> {
        self.check(name, SecretsManagerStore::PROMOTE)?;
        self.inner.promote_secret(name, version).await
    }
    async fn get_secret_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<Secret>, StoreError> {
        self.check(name, SecretsManagerStore::READ)?;
        self.inner.get_secret_version(name, version).await
    }
    /// ListSecrets names no secret: granted on `*` (`Resource::AnySecret`) or not at all.
    async fn list_secrets(
        &self,
        prefix: &str,
        page: Option<&str>,
        limit: usize,
    ) -> Result<kirim::ports::SecretPage, StoreError> {
        let granted = self
            .function
            .needs()
            .get(&Resource::AnySecret)
            .is_some_and(|a| SecretsManagerStore::LIST.iter().all(|x| a.contains(x)));
        if !granted {
            return Err(StoreError::Misconfigured(format!(
                "{} may not list secrets",
                self.function.name()
            )));
        }
        self.inner.list_secrets(prefix, page, limit).await
    }
}

/// A callback receiver on a free loopback port, counting what it accepted.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let got = Arc::new(AtomicUsize::new(0));
    let counter = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test]
async fn a_message_travels_through_functions_wired_only_with_the_ports_they_declare() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let queue: Arc<dyn DispatchQueue> = Arc::new(MemoryQueue::new(Duration::from_secs(360), 10));
    let callback_queue: Arc<dyn DispatchQueue> =
        Arc::new(MemoryQueue::new(Duration::from_secs(360), 10));
    let secrets = Arc::new(MemorySecrets::default());
    let data_keys: Arc<dyn kirim::ports::DataKeys> =
        Arc::new(kirim::adapters::memory::LocalDataKeys::generate());
    let wamid = format!("wamid.wired.{}", ulid::Ulid::new());
    // As wiring::lambda_deps wires a function, over the memory backend.
    let deps_for = |f: Function| -> Deps {
        let queue_or_refusal = |port: Port, q: &Arc<dyn DispatchQueue>| -> Arc<dyn DispatchQueue> {
            if f.uses_port(port) {
                q.clone()
            } else {
                Arc::new(NotWired::new(f.name(), port))
            }
        };
        let meta: Arc<dyn MetaClient> = if f.uses_port(Port::Meta) {
            Arc::new(FixedWamid(wamid.clone()))
        } else {
            Arc::new(NotWired::new(f.name(), Port::Meta))
        };
        Deps::new(Backends {
            store: store.clone(),
            queue: queue_or_refusal(Port::DispatchQueue, &queue),
            callback_queue: queue_or_refusal(Port::CallbackQueue, &callback_queue),
            secrets: Arc::new(Granted {
                inner: secrets.clone(),
                function: f,
                prefix: test_settings().secret_prefix,
            }),
            data_keys: if f.uses_port(Port::DataKeys) {
                data_keys.clone()
            } else {
                Arc::new(NotWired::new(f.name(), Port::DataKeys))
            },
            meta,
            clock: clock.clone(),
            settings: test_settings(),
            secret_ttl: Duration::ZERO,
            read_cache_ttl: Duration::ZERO,
        })
    };

    // admin_api: the operator onboards a tenant, whose admin sets a status callback.
    let admin = deps_for(Function::AdminApi);
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai",
        "waba_id": "1", "phone_number_id": "4242", "meta_access_token": "EAAG", "credits": 2}))
    .unwrap();
    let (tenant, _) = accounts::create_tenant(&admin, req).await.unwrap();
    let (url, delivered) = receiver().await;
    let update: callbacks::CallbackUpdate =
        serde_json::from_value(json!({"url": url, "secret": "whsec_wired_callback_secret_0123"}))
            .unwrap();
    callbacks::put_setting(&admin, &tenant.id, update)
        .await
        .unwrap();
    // The console's settings page replaces the secret (staged, then made current: which
    // version is current is read to move the label).
    let update: callbacks::CallbackUpdate =
        serde_json::from_value(json!({"url": url, "secret": "whsec_wired_callback_secret_4567"}))
            .unwrap();
    callbacks::put_setting(&deps_for(Function::Console), &tenant.id, update)
        .await
        .unwrap();
    let name = callbacks::secret_name(&admin, &tenant.id);
    let current = deps_for(Function::StatusCallback)
        .secrets
        .store()
        .get_secret(&name)
        .await
        .unwrap();
    assert_eq!(
        current.as_ref().map(|s| s.expose()),
        Some("whsec_wired_callback_secret_4567"),
        "made current (a failed promotion is only logged: its grant is checked here)"
    );

    // send_api: the tenant sends; the job is queued.
    let send_api = deps_for(Function::SendApi);
    // The user wrote first (the webhook recorded it): a session text is allowed.
    let from = kirim::domain::OptOutKey::parse("+60123456789").unwrap();
    kirim::service::contacts::user_wrote(
        &deps_for(Function::Webhook),
        &tenant.id,
        &tenant.phone_number_id,
        &[from],
        None,
    )
    .await
    .unwrap();
    let msg: send::SendRequest =
        serde_json::from_value(json!({"to": "+60123456789", "text": {"body": "hi"}})).unwrap();
    let record = send::send(&send_api, &tenant.id, msg).await.unwrap();

    // dispatcher: the queue's event source hands it the job; Meta accepts it.
    let dispatcher = deps_for(Function::Dispatcher);
    let jobs = queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        dispatch::handle(&dispatcher, &jobs[0].body).await,
        Outcome::Done
    );
    queue.delete(&jobs[0].receipt).await.unwrap();

    // webhook: Meta reports it delivered.
    let hook = deps_for(Function::Webhook);
    let note = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp",
        "metadata":{"display_phone_number":"60300000000","phone_number_id":"4242"},
        "statuses":[{"id":wamid,"status":"delivered",
            "timestamp":(chrono::Utc::now().timestamp() + 1).to_string(),"recipient_id":"60123456789"}]
    }}]}]});
    webhook::apply(&hook, note.to_string().as_bytes())
        .await
        .unwrap();
    let m = send_api
        .messages
        .get_message(&tenant.id, &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, MessageStatus::Delivered);

    // status_callback: the callback queue's event source hands it sent and delivered.
    let status_callback = deps_for(Function::StatusCallback);
    let changes = callback_queue.receive(10, Duration::ZERO).await.unwrap();
    let items: Vec<(String, u32)> = changes
        .iter()
        .map(|c| (c.body.clone(), c.receive_count))
        .collect();
    assert_eq!(items.len(), 2, "sent and delivered were queued");
    let outcomes = callbacks::handle_batch(&status_callback, &items).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Done), "{outcomes:?}");
    assert_eq!(delivered.load(Ordering::SeqCst), 2);

    // send_api again: a scheduled message, cancelled while it waits, queues its
    // `cancelled` callback (DELETE /v1/messages/{id} is send_api's).
    let send_at =
        (kirim::ports::Clock::now(clock.as_ref()) + chrono::Duration::minutes(10)).to_rfc3339();
    let msg: send::SendRequest = serde_json::from_value(
        json!({"to": "+60123456789", "text": {"body": "later"}, "send_at": send_at}),
    )
    .unwrap();
    let scheduled = send::send(&send_api, &tenant.id, msg).await.unwrap();
    send::cancel_scheduled(&send_api, &tenant.id, &scheduled.id)
        .await
        .unwrap();
    let cancelled = callback_queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(cancelled.len(), 1, "the cancel's callback was queued");
    assert!(
        cancelled[0].body.contains("cancelled"),
        "{}",
        cancelled[0].body
    );

    // retention: the daily run.
    let retention = deps_for(Function::Retention);
    kirim::queue_handlers::scheduled_retention(&retention)
        .await
        .unwrap();
}

/// The variables Lambda sets, with moto as the endpoint.
fn lambda_variables(endpoint: &str) -> std::collections::HashMap<&'static str, String> {
    std::collections::HashMap::from([
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_SESSION_TOKEN", "session".to_owned()),
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
    ])
}

#[tokio::test]
async fn a_lambdas_sdk_config_from_its_variables_reaches_dynamodb_sqs_and_secrets_manager() {
    let vars = lambda_variables(&kirim_tests::moto_endpoint().await);
    let mut env = kirim::config::EnvReader::new(|k| vars.get(k).cloned());
    let sdk = kirim::wiring::lambda_sdk_config(&mut env);
    env.finish().expect("every variable is there");
    aws_sdk_dynamodb::Client::new(&sdk)
        .list_tables()
        .send()
        .await
        .expect("DynamoDB answers, signed with the environment's credentials");
    aws_sdk_sqs::Client::new(&sdk)
        .list_queues()
        .send()
        .await
        .expect("SQS answers");
    aws_sdk_secretsmanager::Client::new(&sdk)
        .list_secrets()
        .send()
        .await
        .expect("Secrets Manager answers");
}

#[test]
fn a_lambda_without_its_region_or_credentials_fails_its_init_naming_each() {
    let vars: std::collections::HashMap<&str, String> =
        std::collections::HashMap::from([("AWS_SESSION_TOKEN", "session".to_owned())]);
    let mut env = kirim::config::EnvReader::new(|k| vars.get(k).cloned());
    let _ = kirim::wiring::lambda_sdk_config(&mut env);
    let problems = env.finish().expect_err("refused").0;
    for name in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            problems.iter().any(|p| p.contains(name)),
            "{name} in {problems:?}"
        );
    }
}
