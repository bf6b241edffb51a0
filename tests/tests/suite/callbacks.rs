//! Status callbacks and statuses that arrive before their wamid is known, end to end
//! through local mode on both backends: a receiver on 127.0.0.1 gets every change of a
//! message, signed, also after it was down for a while.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kirim::config::Backend;
use kirim::ports::{MetaAccepted, MetaClient, MetaSendError};
use kirim::secret::Secret;
use kirim::service::dispatch;
use kirim::service::jobs::Outcome;
use kirim_tests::{capture_logs, captured_logs, local_config, sign_with, spawn_app, TestApp};
use serde_json::{json, Value};

pub(crate) const CALLBACK_SECRET: &str = "whsec_test_callback_secret_0123456789";

/// One POST the receiver accepted: its signature and timestamp headers and raw body.
#[derive(Clone, Debug)]
pub(crate) struct Got {
    signature: String,
    timestamp: String,
    timed: String,
    pub(crate) body: String,
}

#[derive(Clone, Default)]
pub(crate) struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Requests still to answer 503 (the receiver is "down").
    down_for: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    if r.down_for
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        r.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if let Ok(mut got) = r.got.lock() {
        got.push(Got {
            signature: header("x-kirim-signature"),
            timestamp: header("x-kirim-timestamp"),
            timed: header("x-kirim-signature-timed"),
            body,
        });
    }
    StatusCode::OK
}

/// A receiver on a free loopback port that answers 503 to its first `down_for` requests.
pub(crate) async fn receiver(down_for: usize) -> (String, Receiver) {
    let r = Receiver::default();
    r.down_for.store(down_for, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), r)
}

impl Receiver {
    /// The bodies received so far, in order.
    pub(crate) fn bodies(&self) -> Vec<String> {
        self.got
            .lock()
            .map(|g| g.iter().map(|x| x.body.clone()).collect())
            .unwrap_or_default()
    }

    /// Waits until callbacks for all of `statuses` arrived (or a deadline passes).
    pub(crate) async fn wait_for(&self, statuses: &[&str]) -> Vec<Got> {
        for _ in 0..200 {
            let got = self.got.lock().map(|g| g.clone()).unwrap_or_default();
            let seen: Vec<String> = got.iter().map(status_of).collect();
            if statuses.iter().all(|s| seen.iter().any(|x| x == s)) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Waits until `n` callbacks of `status` arrived (or a deadline passes): each message's
    /// callback is its own job, delivered after its status is written, so seeing one of
    /// them says nothing of the others.
    pub(crate) async fn wait_for_count(&self, status: &str, n: usize) -> Vec<Got> {
        let deadline = std::time::Instant::now() + kirim_tests::SETTLE_DEADLINE;
        loop {
            let got = self.got.lock().map(|g| g.clone()).unwrap_or_default();
            let seen = got.iter().filter(|g| status_of(g) == status).count();
            if seen >= n || std::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub(crate) fn status_of(g: &Got) -> String {
    serde_json::from_str::<Value>(&g.body)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) async fn set_callback(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let res = app
        .http
        .put(app.url("/v1/settings/status-callback"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    assert!(
        !text.contains(CALLBACK_SECRET),
        "the secret never comes back"
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get_callback(app: &TestApp, key: &str) -> Value {
    app.http
        .get(app.url("/v1/settings/status-callback"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every callback is signed over its exact body and carries no content or number.
fn check_signed(got: &[Got], message_id: &str) {
    for g in got {
        assert_eq!(
            g.signature,
            sign_with(CALLBACK_SECRET, g.body.as_bytes()),
            "X-Kirim-Signature is the HMAC-SHA256 of the raw body"
        );
        assert!(g.timestamp.parse::<i64>().is_ok(), "X-Kirim-Timestamp");
        // The timed signature covers the timestamp too: a replay with a fresh timestamp
        // header does not verify.
        let timed = format!("{}.{}", g.timestamp, g.body);
        assert_eq!(
            g.timed,
            sign_with(CALLBACK_SECRET, timed.as_bytes()),
            "X-Kirim-Signature-Timed is the HMAC-SHA256 of `{{timestamp}}.{{raw body}}`"
        );
        let replayed = format!("{}.{}", g.timestamp.parse::<i64>().unwrap() + 600, g.body);
        assert_ne!(g.timed, sign_with(CALLBACK_SECRET, replayed.as_bytes()));
        let v: Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!(v["id"], message_id);
        assert_eq!(v["client_reference"], "order-42");
        assert!(v["at"].is_string());
        let want_seq = match v["status"].as_str() {
            Some("sent") => 1,
            Some("failed") => 2,
            Some("delivered") => 3,
            Some("read") => 4,
            _ => 0,
        };
        assert_eq!(v["sequence"], want_seq, "{v}");
        assert!(!g.body.contains("ORDER-42"), "no template parameters");
        assert!(!g.body.contains("6012345"), "no recipient number");
    }
}

async fn every_status_change_reaches_the_callback_signed_even_after_the_receiver_was_down(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let (url, r) = receiver(2).await;
    let (status, body) =
        set_callback(&app, &t.key, json!({"url": url, "secret": CALLBACK_SECRET})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"url": url, "secret_set": true}));
    assert_eq!(
        get_callback(&app, &t.key).await,
        json!({"url": url, "secret_set": true})
    );

    let id = app.send_ok(&t.key, "+60123450300").await;
    let view = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(view["status"], "read", "{view}");
    let got = r.wait_for(&["sent", "delivered", "read"]).await;
    let mut statuses: Vec<String> = got.iter().map(status_of).collect();
    statuses.sort();
    statuses.dedup();
    assert_eq!(statuses, vec!["delivered", "read", "sent"], "{got:?}");
    assert_eq!(
        r.refused.load(Ordering::SeqCst),
        2,
        "it was down for two attempts, and they were retried"
    );
    check_signed(&got, &id);
    assert!(
        !captured_logs().contains(CALLBACK_SECRET),
        "the secret is never logged"
    );
}

/// Meta's client, answering this wamid (so the test knows it before the send).
pub(crate) struct FixedWamid(pub(crate) String);

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

/// A status for a number no tenant has (another sender's number on a subscribed WhatsApp
/// Business Account) is not kept: it is no message of Kirim's, and a kept status holds its
/// wamid, which encodes the recipient's number, for 7 days.
async fn a_status_for_a_number_no_tenant_has_is_not_kept(b: Backend) {
    let app = spawn_app(b).await;
    let wamid = format!("wamid.other.{}", ulid::Ulid::new());
    let note = json!({"object":"whatsapp_business_account","entry":[{"id":"1000001","changes":[{"field":"messages","value":{
    "messaging_product":"whatsapp",
    "metadata":{"display_phone_number":"60300000999","phone_number_id":"909090909090"},
    "statuses":[{"id":wamid,"status":"delivered","timestamp":chrono::Utc::now().timestamp().to_string(),"recipient_id":"60123450309"}]}}]}]});
    let res = app.post_webhook(&note).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["summary"]["unknown"], 1, "{body}");
    assert!(app
        .app
        .deps
        .pending
        .pending_statuses(&wamid)
        .await
        .unwrap()
        .is_empty());
    // Nor one whose metadata names no number at all (it was kept for 7 days).
    let unnamed = format!("wamid.unnamed.{}", ulid::Ulid::new());
    let mut bare = note.clone();
    bare["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = json!(unnamed);
    bare["entry"][0]["changes"][0]["value"]["metadata"] =
        json!({"display_phone_number":"60300000999"});
    let res = app.post_webhook(&bare).await;
    assert_eq!(res.status(), 200);
    assert!(
        app.app
            .deps
            .pending
            .pending_statuses(&unnamed)
            .await
            .unwrap()
            .is_empty(),
        "not kept"
    );
    // One that echoes a message id of Kirim's (a number removed while its messages were in
    // flight) is kept, for the dispatcher to apply.
    let ours = format!("wamid.ours.{}", ulid::Ulid::new());
    let mut kept = note.clone();
    kept["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = json!(ours);
    kept["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] =
        json!(ulid::Ulid::new().to_string());
    assert_eq!(app.post_webhook(&kept).await.status(), 200);
    assert_eq!(
        app.app
            .deps
            .pending
            .pending_statuses(&ours)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn a_status_for_a_wamid_not_yet_known_is_kept_and_the_message_still_ends_read(b: Backend) {
    capture_logs();
    // No queue pollers: the test runs the dispatcher itself, after the statuses came.
    let mut cfg = local_config(b).await;
    cfg.pollers = 0;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(3).await;
    let (url, r) = receiver(0).await;
    let (status, _) =
        set_callback(&app, &t.key, json!({"url": url, "secret": CALLBACK_SECRET})).await;
    assert_eq!(status, 200);
    let id = app.send_ok(&t.key, "+60123450301").await;

    // Meta's statuses arrive (twice) before the dispatcher has recorded the wamid.
    let wamid = format!("wamid.early.{}", ulid::Ulid::new());
    let now = chrono::Utc::now().timestamp();
    let note = json!({"object":"whatsapp_business_account","entry":[{"id":"1000001","changes":[{"field":"messages","value":{
    "messaging_product":"whatsapp",
    "metadata":{"display_phone_number":"60300000000","phone_number_id":t.phone_number_id},
    "statuses":[
        {"id":wamid,"status":"delivered","timestamp":(now + 1).to_string(),"recipient_id":"60123450301"},
        {"id":wamid,"status":"read","timestamp":(now + 2).to_string(),"recipient_id":"60123450301"}
    ]}}]}]});
    for _ in 0..2 {
        assert_eq!(app.post_webhook(&note).await.status(), 200);
    }
    assert_eq!(app.message(&t.key, &id).await["status"], "accepted");
    let deps = app.app.deps.clone();
    assert_eq!(
        deps.pending.pending_statuses(&wamid).await.unwrap().len(),
        2,
        "kept once each"
    );

    // The dispatcher sends it, records the wamid, and applies what was kept.
    let mut with_wamid = deps.clone();
    with_wamid.meta = Arc::new(FixedWamid(wamid.clone()));
    let jobs = deps
        .queue
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        dispatch::handle(&with_wamid, &jobs[0].body).await,
        Outcome::Done
    );
    deps.queue.delete(&jobs[0].receipt).await.unwrap();

    let view = app.message(&t.key, &id).await;
    assert_eq!(view["status"], "read", "{view}");
    assert_eq!(view["wamid"], wamid.as_str());
    let events: Vec<&str> = view["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["status"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        events,
        vec!["accepted", "sending", "sent", "delivered", "read"]
    );
    assert!(deps
        .pending
        .pending_statuses(&wamid)
        .await
        .unwrap()
        .is_empty());

    // A late duplicate changes nothing.
    assert_eq!(app.post_webhook(&note).await.status(), 200);
    assert_eq!(app.message(&t.key, &id).await["events"], view["events"]);

    // And the tenant heard of each change, signed.
    let got = r.wait_for(&["sent", "delivered", "read"]).await;
    check_signed(&got, &id);
    let mut statuses: Vec<String> = got.iter().map(status_of).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        vec!["delivered", "read", "sent"],
        "each once: {got:?}"
    );
}

/// Kept statuses whose first read fails (a throttled `Query`), then come from the store.
struct FailingOnce {
    inner: Arc<dyn kirim::ports::PendingStatusStore>,
    failures: AtomicUsize,
}

#[async_trait]
impl kirim::ports::PendingStatusStore for FailingOnce {
    async fn put_pending_status(
        &self,
        status: &kirim::ports::PendingStatus,
    ) -> Result<bool, kirim::store_error::StoreError> {
        self.inner.put_pending_status(status).await
    }
    async fn pending_statuses(
        &self,
        wamid: &str,
    ) -> Result<Vec<kirim::ports::PendingStatus>, kirim::store_error::StoreError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(kirim::store_error::StoreError::Unavailable(
                "throttled".into(),
            ));
        }
        self.inner.pending_statuses(wamid).await
    }
    async fn delete_pending_status(
        &self,
        status: &kirim::ports::PendingStatus,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.inner.delete_pending_status(status).await
    }
}

async fn kept_statuses_that_cannot_be_applied_after_the_send_bring_the_job_back_for_them(
    b: Backend,
) {
    let mut cfg = local_config(b).await;
    cfg.pollers = 0;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(3).await;
    let id = app.send_ok(&t.key, "+60123450302").await;
    let wamid = format!("wamid.early.{}", ulid::Ulid::new());
    let now = chrono::Utc::now().timestamp();
    let note = json!({"object":"whatsapp_business_account","entry":[{"id":"1000001","changes":[{"field":"messages","value":{
    "messaging_product":"whatsapp",
    "metadata":{"display_phone_number":"60300000000","phone_number_id":t.phone_number_id},
    "statuses":[{"id":wamid,"status":"delivered","timestamp":(now + 1).to_string(),"recipient_id":"60123450302"}]}}]}]});
    assert_eq!(app.post_webhook(&note).await.status(), 200);
    let deps = app.app.deps.clone();
    let mut flaky = deps.clone();
    flaky.meta = Arc::new(FixedWamid(wamid.clone()));
    flaky.pending = Arc::new(FailingOnce {
        inner: deps.pending.clone(),
        failures: AtomicUsize::new(1),
    });
    let jobs = deps
        .queue
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let first = dispatch::handle(&flaky, &jobs[0].body).await;
    assert!(
        matches!(first, Outcome::Backoff(_)),
        "not dropped: {first:?}"
    );
    assert_eq!(app.message(&t.key, &id).await["status"], "sent");
    // The same job again: its claim is refused (sent once), and the kept status applies.
    assert_eq!(dispatch::handle(&flaky, &jobs[0].body).await, Outcome::Done);
    assert_eq!(app.message(&t.key, &id).await["status"], "delivered");
    assert!(deps
        .pending
        .pending_statuses(&wamid)
        .await
        .unwrap()
        .is_empty());
}

/// The job back for kept statuses after Meta accepted meets a tenant suspended meanwhile
/// (another message's 190): it fails no message then (this one is `sent`), and it still
/// applies the statuses before it ends; dropped at the tenant's check, they would never
/// apply (Meta sends them once) and the message would stay `sent` for good.
async fn kept_statuses_a_job_comes_back_for_apply_though_its_tenant_was_suspended_meanwhile(
    b: Backend,
) {
    let mut cfg = local_config(b).await;
    cfg.pollers = 0;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(3).await;
    let id = app.send_ok(&t.key, "+60123450303").await;
    let wamid = format!("wamid.early.{}", ulid::Ulid::new());
    let now = chrono::Utc::now().timestamp();
    let note = json!({"object":"whatsapp_business_account","entry":[{"id":"1000001","changes":[{"field":"messages","value":{
    "messaging_product":"whatsapp",
    "metadata":{"display_phone_number":"60300000000","phone_number_id":t.phone_number_id},
    "statuses":[{"id":wamid,"status":"delivered","timestamp":(now + 1).to_string(),"recipient_id":"60123450303"}]}}]}]});
    assert_eq!(app.post_webhook(&note).await.status(), 200);
    let deps = app.app.deps.clone();
    let mut flaky = deps.clone();
    flaky.meta = Arc::new(FixedWamid(wamid.clone()));
    flaky.pending = Arc::new(FailingOnce {
        inner: deps.pending.clone(),
        failures: AtomicUsize::new(1),
    });
    let jobs = deps
        .queue
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let first = dispatch::handle(&flaky, &jobs[0].body).await;
    assert!(matches!(first, Outcome::Backoff(_)), "{first:?}");
    assert_eq!(app.message(&t.key, &id).await["status"], "sent");
    let tenant = kirim::domain::TenantId::from_trusted(t.tenant_id.clone());
    kirim::service::accounts::set_status(
        &deps,
        &tenant,
        kirim::ports::TenantStatus::Suspended,
        Some("meta error 190".into()),
    )
    .await
    .unwrap();
    assert_eq!(dispatch::handle(&flaky, &jobs[0].body).await, Outcome::Done);
    let view = app.message(&t.key, &id).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert!(deps
        .pending
        .pending_statuses(&wamid)
        .await
        .unwrap()
        .is_empty());
}

async fn the_callback_secret_is_write_only_and_bad_urls_are_refused_with_400(b: Backend) {
    capture_logs();
    // As outside local mode: https and public targets only.
    let mut cfg = local_config(b).await;
    cfg.settings.callbacks_allow_private = false;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(1).await;
    assert_eq!(
        get_callback(&app, &t.key).await,
        json!({"url": null, "secret_set": false})
    );
    for bad in [
        json!({"url": "not a url", "secret": CALLBACK_SECRET}),
        json!({"url": "ftp://hooks.example.com/x", "secret": CALLBACK_SECRET}),
        json!({"url": "http://hooks.example.com/x", "secret": CALLBACK_SECRET}),
        json!({"url": "https://127.0.0.1/x", "secret": CALLBACK_SECRET}),
        json!({"url": "https://169.254.169.254/latest/meta-data", "secret": CALLBACK_SECRET}),
        json!({"url": "https://[fd00::1]/x", "secret": CALLBACK_SECRET}),
        json!({"url": "https://localhost/x", "secret": CALLBACK_SECRET}),
        json!({"url": "https://user:pw@hooks.example.com/x", "secret": CALLBACK_SECRET}),
        json!({"url": "https://hooks.example.com/x"}),
        json!({"url": "https://hooks.example.com/x", "secret": "short"}),
        json!({"url": "https://hooks.example.com/x", "secret": CALLBACK_SECRET, "extra": 1}),
    ] {
        let (status, body) = set_callback(&app, &t.key, bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{bad}");
    }
    let url = "https://hooks.example.com/kirim";
    let (status, body) =
        set_callback(&app, &t.key, json!({"url": url, "secret": CALLBACK_SECRET})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"url": url, "secret_set": true}));
    // A new URL may keep the secret already set. One carrying a token of the receiving
    // service's in its query reaches the audit trail as its host and hash only.
    let relay = "https://hooks.example.com/v2?token=relay-token-0123456789";
    let (status, _) = set_callback(&app, &t.key, json!({"url": relay})).await;
    assert_eq!(status, 200);
    let audit: Value = app
        .http
        .get(app.url("/v1/audit?action=PUT%20/v1/settings/status-callback"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = audit.to_string();
    assert!(!text.contains("relay-token-0123456789"), "{text}");
    assert!(!text.contains(CALLBACK_SECRET));
    let details = &audit["events"][0]["details"];
    assert_eq!(details["url_host"], "hooks.example.com", "{audit}");
    assert_eq!(
        details["url_sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(relay.as_bytes())),
        "{audit}"
    );
    let res = app
        .http
        .delete(app.url("/v1/settings/status-callback"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        get_callback(&app, &t.key).await,
        json!({"url": null, "secret_set": false})
    );
    assert!(!captured_logs().contains(CALLBACK_SECRET));
}

/// The tenant hears of every end, not only Meta's: a message the sending deadline failed
/// (`outcome_unknown`: Meta never confirmed it) and a scheduled message cancelled.
async fn a_deadline_failure_and_a_cancelled_scheduled_message_reach_the_callback(b: Backend) {
    let mut cfg = local_config(b).await;
    cfg.settings.sending_deadline = Duration::from_secs(2);
    let app = kirim_tests::spawn_with(cfg).await;
    // Statuses go nowhere: nothing but the deadline settles the message.
    app.app
        .sandbox
        .set_webhook_url("http://127.0.0.1:9/nowhere".into());
    let t = app.onboard(5).await;
    let (url, r) = receiver(0).await;
    let (status, _) =
        set_callback(&app, &t.key, json!({"url": url, "secret": CALLBACK_SECRET})).await;
    assert_eq!(status, 200);
    // 0005: Meta answers too late; the message stays `sending` until the deadline.
    let unknown = app.send_ok(&t.key, "+60123450005").await;
    let send_at = (chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339();
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .json(
            &json!({"to": "+60123450302", "send_at": send_at, "template": {
            "name": "order_update", "language": "en_US", "category": "utility",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let scheduled = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .http
        .delete(app.url(&format!("/v1/messages/{scheduled}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let view = app.wait_status(&t.key, &unknown, "failed").await;
    assert_eq!(view["error"]["code"], "outcome_unknown", "{view}");
    let got = r.wait_for(&["failed", "cancelled"]).await;
    let bodies: Vec<Value> = got
        .iter()
        .filter_map(|g| serde_json::from_str(&g.body).ok())
        .collect();
    let of = |id: &str| {
        bodies
            .iter()
            .find(|b| b["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("a callback for {id}: {bodies:?}"))
    };
    let failed = of(&unknown);
    assert_eq!(
        (
            &failed["status"],
            &failed["sequence"],
            &failed["error"]["code"]
        ),
        (&json!("failed"), &json!(2), &json!("outcome_unknown"))
    );
    let cancelled = of(&scheduled);
    assert_eq!(
        (
            &cancelled["status"],
            &cancelled["sequence"],
            &cancelled["error"]["code"]
        ),
        (&json!("cancelled"), &json!(2), &json!("cancelled"))
    );
    for g in &got {
        let expected = sign_with(CALLBACK_SECRET, g.body.as_bytes());
        assert_eq!(g.signature, expected);
    }
}

/// A receiver that accepts connections and never answers holds each try for the whole
/// timeout. After three such tries in a row its tenant's callbacks are not tried for a
/// while (no connection, no wait), not even at their last attempt (parked untried), so
/// they stop holding the batches other tenants' callbacks share with them.
#[tokio::test]
async fn a_receiver_that_keeps_hanging_is_not_tried_for_a_while() {
    use kirim::domain::{MessageId, MessageStatus};
    use kirim::service::callbacks;
    use kirim::service::jobs::{CallbackJob, QueueJob};
    let app = spawn_app(kirim::config::Backend::Memory).await;
    let t = app.onboard(1).await;
    // Accepts, counts, and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    let (status, body) =
        set_callback(&app, &t.key, json!({"url": url, "secret": CALLBACK_SECRET})).await;
    assert_eq!(status, 200, "{body}");
    let mut deps = app.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.callback_timeout = Duration::from_millis(300);
    deps.settings = Arc::new(settings);
    let job = || {
        QueueJob::StatusCallback(CallbackJob {
            tenant_id: kirim::domain::TenantId::from_trusted(t.tenant_id.clone()),
            message_id: MessageId::generate(),
            status: MessageStatus::Sent,
            at: chrono::Utc::now(),
            sequence: 1,
            error: None,
            client_reference: None,
        })
        .to_body()
        .unwrap()
    };
    for _ in 0..6 {
        let outcome = callbacks::handle_batch(&deps, &[(job(), 1)]).await;
        assert!(
            matches!(outcome[..], [Outcome::RetryAfter(_)]),
            "{outcome:?}"
        );
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "three hanging tries, then none"
    );
    // Nor at a job's last attempt: parked untried (a last try made anyway held the batch
    // for the whole timeout once per callback of a dead receiver).
    let last = deps.settings.callback_max_attempts;
    let outcome = callbacks::handle_batch(&deps, &[(job(), last)]).await;
    assert!(matches!(outcome[..], [Outcome::Poison]), "{outcome:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 3, "not tried");
}

/// Callback settings whose ordinary read is a moment behind: a setting just made reads as
/// absent (an eventually consistent read, or a cached absence).
struct LaggingSettings(Arc<dyn kirim::ports::StatusCallbackStore>);

kirim_tests::pass_through! {
    impl StatusCallbackStore for LaggingSettings via 0 {
        async fn get_status_callback(
            &self,
            _: &kirim::domain::TenantId,
        ) -> Result<Option<kirim::ports::StatusCallback>, kirim::store_error::StoreError> {
            Ok(None)
        }
        async fn get_status_callback_fresh(
            &self,
            tenant: &kirim::domain::TenantId,
        ) -> Result<Option<kirim::ports::StatusCallback>, kirim::store_error::StoreError> {
            self.0.get_status_callback_fresh(tenant).await
        }
    }
}

/// A tenant of a memory app whose status callbacks go to a receiver answering every
/// request `answer`; the app, the tenant and how many requests the receiver got.
async fn tenant_with_a_receiver_answering(
    answer: StatusCode,
) -> (TestApp, kirim_tests::Onboarded, Arc<AtomicUsize>) {
    let app = spawn_app(kirim::config::Backend::Memory).await;
    let t = app.onboard(1).await;
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let receiver = axum::Router::new().fallback(move || {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { answer }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let (status, body) =
        set_callback(&app, &t.key, json!({"url": url, "secret": CALLBACK_SECRET})).await;
    assert_eq!(status, 200, "{body}");
    (app, t, requests)
}

/// A queued callback job of the tenant's, for a message of its own, as its body.
fn callback_job(
    t: &kirim_tests::Onboarded,
    status: kirim::domain::MessageStatus,
    sequence: u32,
) -> String {
    use kirim::service::jobs::{CallbackJob, QueueJob};
    QueueJob::StatusCallback(CallbackJob {
        tenant_id: kirim::domain::TenantId::from_trusted(t.tenant_id.clone()),
        message_id: kirim::domain::MessageId::generate(),
        status,
        at: chrono::Utc::now(),
        sequence,
        error: None,
        client_reference: None,
    })
    .to_body()
    .unwrap()
}

/// A callback job exists because a process found the tenant's setting: a sender whose own
/// read of it lags (a setting made a moment ago) confirms the absence with a consistent
/// read and delivers, instead of dropping the job without a trace.
#[tokio::test]
async fn a_callback_whose_setting_reads_absent_a_moment_after_it_was_set_is_still_delivered() {
    use kirim::service::callbacks;
    let (app, t, delivered) = tenant_with_a_receiver_answering(StatusCode::OK).await;
    let mut deps = app.app.deps.clone();
    deps.status_callbacks = Arc::new(LaggingSettings(deps.status_callbacks.clone()));
    let job = callback_job(&t, kirim::domain::MessageStatus::Sent, 1);
    assert_eq!(
        callbacks::handle_batch(&deps, &[(job, 1)]).await,
        [Outcome::Done]
    );
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        1,
        "delivered, not dropped"
    );
}

/// A callback whose receiver still fails at the last attempt is not deleted with a log
/// line: it is left to the queue (`Poison`), whose redrive parks it on the dead-letter
/// queue for the operator to list and redrive; the receives past the last attempt make no
/// further try.
#[tokio::test]
async fn a_callback_given_up_is_left_to_the_dead_letter_queue_not_deleted() {
    use kirim::service::callbacks;
    let (app, t, tries) = tenant_with_a_receiver_answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let mut deps = app.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.callback_max_attempts = 2;
    deps.settings = Arc::new(settings);
    let job = callback_job(&t, kirim::domain::MessageStatus::Delivered, 3);
    let outcome = callbacks::handle_batch(&deps, &[(job.clone(), 1)]).await;
    assert!(
        matches!(outcome[..], [Outcome::RetryAfter(_)]),
        "{outcome:?}"
    );
    let outcome = callbacks::handle_batch(&deps, &[(job.clone(), 2)]).await;
    assert_eq!(
        outcome,
        [Outcome::Poison],
        "the last attempt failed: parked"
    );
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    let outcome = callbacks::handle_batch(&deps, &[(job, 3)]).await;
    assert_eq!(outcome, [Outcome::Poison]);
    assert_eq!(
        tries.load(Ordering::SeqCst),
        2,
        "no try past the last attempt"
    );
}

/// A callback whose URL is refused by its text at delivery (a local name, saved while
/// private targets were allowed) cannot succeed: it ends without a try and is not parked.
/// (One whose host *resolves* to a non-public address is tried again and parked after its
/// last attempt, since DNS answers change: `callback_http`'s `ResolvesNonPublic`.)
#[tokio::test]
async fn a_callback_whose_url_is_refused_by_its_text_ends_untried_and_unparked() {
    use kirim::service::callbacks;
    let (app, t, _) = tenant_with_a_receiver_answering(StatusCode::OK).await;
    let (status, body) = set_callback(
        &app,
        &t.key,
        json!({"url": "https://localhost:9/hook", "secret": CALLBACK_SECRET}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut deps = app.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.callbacks_allow_private = false;
    deps.settings = Arc::new(settings);
    let job = callback_job(&t, kirim::domain::MessageStatus::Delivered, 3);
    let outcome = callbacks::handle_batch(&deps, &[(job, 1)]).await;
    // (A name resolving to a non-public address would be `RetryAfter`.)
    assert_eq!(outcome, [Outcome::Done]);
}

/// Copies of one callback in a batch (a status applied twice, SQS delivering twice) make
/// one request and share its outcome: each try may take the whole callback timeout, and a
/// group of copies at a slow receiver could run the batch past the function's timeout.
#[tokio::test]
async fn copies_of_a_callback_in_one_batch_make_one_request() {
    use kirim::service::callbacks;
    let (app, t, tries) = tenant_with_a_receiver_answering(StatusCode::OK).await;
    let job = callback_job(&t, kirim::domain::MessageStatus::Delivered, 3);
    let outcome = callbacks::handle_batch(
        &app.app.deps,
        &[(job.clone(), 1), (job.clone(), 2), (job, 1)],
    )
    .await;
    assert_eq!(outcome, [Outcome::Done, Outcome::Done, Outcome::Done]);
    assert_eq!(tries.load(Ordering::SeqCst), 1, "one request");
    // A failing receiver: one try, every copy retried.
    let (app, t, tries) = tenant_with_a_receiver_answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let job = callback_job(&t, kirim::domain::MessageStatus::Read, 4);
    let outcome = callbacks::handle_batch(&app.app.deps, &[(job.clone(), 1), (job, 1)]).await;
    assert!(
        matches!(
            outcome[..],
            [Outcome::RetryAfter(_), Outcome::RetryAfter(_)]
        ),
        "{outcome:?}"
    );
    assert_eq!(tries.load(Ordering::SeqCst), 1);
    // Held behind a failing earlier callback, a copy at its last attempt is still tried
    // (never given up untried), though its first copy was held without a try.
    let mut deps = app.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.callback_max_attempts = 3;
    deps.settings = Arc::new(settings);
    let earlier = callback_job(&t, kirim::domain::MessageStatus::Sent, 2);
    let later = callback_job(&t, kirim::domain::MessageStatus::Delivered, 3);
    // The same message for all three.
    let same = |body: &str, like: &str| {
        let mut v: Value = serde_json::from_str(body).unwrap();
        let l: Value = serde_json::from_str(like).unwrap();
        v["message_id"] = l["message_id"].clone();
        v.to_string()
    };
    let later = same(&later, &earlier);
    let before = tries.load(Ordering::SeqCst);
    let outcome =
        callbacks::handle_batch(&deps, &[(earlier, 1), (later.clone(), 1), (later, 3)]).await;
    assert!(
        matches!(
            outcome[..],
            [
                Outcome::RetryAfter(_),
                Outcome::RetryAfter(_),
                Outcome::Poison
            ]
        ),
        "{outcome:?}"
    );
    assert_eq!(
        tries.load(Ordering::SeqCst) - before,
        2,
        "the earlier one and the last attempt's copy"
    );
}

/// Copies of one callback at their last attempt (each would bypass the held-back rule and
/// the breaker) make one request between them once a copy failed in the batch: each try
/// may take the whole callback timeout, and a group of them ran the batch past the
/// function's 60 s, so the whole batch came back. The copies are given up with the one
/// tried (parked, as after any failed last try); a copy with attempts left is tried
/// first, and the last-attempt copies then end with its failure instead of a request each.
#[tokio::test]
async fn copies_at_their_last_attempt_make_one_request_between_them_when_it_fails() {
    use kirim::service::callbacks;
    let (app, t, tries) = tenant_with_a_receiver_answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let mut deps = app.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.callback_max_attempts = 3;
    deps.settings = Arc::new(settings);
    let job = callback_job(&t, kirim::domain::MessageStatus::Delivered, 3);
    let outcome = callbacks::handle_batch(&deps, &vec![(job, 3); 6]).await;
    assert_eq!(outcome, vec![Outcome::Poison; 6], "all given up, parked");
    assert_eq!(
        tries.load(Ordering::SeqCst),
        1,
        "one request for six copies"
    );
    // A copy with attempts left among them, after them in the batch: it is the one tried
    // (it goes on with its retries); the copies at their last attempt end with it.
    let job = callback_job(&t, kirim::domain::MessageStatus::Read, 4);
    let outcome =
        callbacks::handle_batch(&deps, &[(job.clone(), 3), (job.clone(), 3), (job, 1)]).await;
    assert!(
        matches!(
            outcome[..],
            [Outcome::Poison, Outcome::Poison, Outcome::RetryAfter(_)]
        ),
        "{outcome:?}"
    );
    assert_eq!(
        tries.load(Ordering::SeqCst),
        2,
        "one request for three copies"
    );
    // Delivered once, every copy is done, whatever its attempt.
    let (app, t, tries) = tenant_with_a_receiver_answering(StatusCode::OK).await;
    let mut deps = app.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.callback_max_attempts = 3;
    deps.settings = Arc::new(settings);
    let job = callback_job(&t, kirim::domain::MessageStatus::Read, 4);
    let outcome =
        callbacks::handle_batch(&deps, &[(job.clone(), 3), (job.clone(), 4), (job, 1)]).await;
    assert_eq!(outcome, [Outcome::Done, Outcome::Done, Outcome::Done]);
    assert_eq!(tries.load(Ordering::SeqCst), 1);
}

/// A message's later callback is held back behind an earlier one that failed in the same
/// batch, except at its own last attempt: it is tried then (and given up, counted, if that
/// fails too), never given up untried.
#[tokio::test]
async fn a_callback_held_back_behind_a_failing_one_still_gets_its_last_try() {
    use kirim::domain::{MessageId, MessageStatus, TenantId};
    use kirim::service::callbacks;
    use kirim::service::jobs::{CallbackJob, QueueJob};
    let (app, t, tries) = tenant_with_a_receiver_answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let mut deps = app.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.callback_max_attempts = 2;
    deps.settings = Arc::new(settings);
    let message_id = MessageId::generate();
    let job = |status: MessageStatus, sequence: u32| {
        QueueJob::StatusCallback(CallbackJob {
            tenant_id: TenantId::from_trusted(t.tenant_id.clone()),
            message_id: message_id.clone(),
            status,
            at: chrono::Utc::now(),
            sequence,
            error: None,
            client_reference: None,
        })
        .to_body()
        .unwrap()
    };
    // `sent` on its first receive, `delivered` on its last (it was queued earlier).
    let outcome = callbacks::handle_batch(
        &deps,
        &[
            (job(MessageStatus::Sent, 1), 1),
            (job(MessageStatus::Delivered, 3), 2),
        ],
    )
    .await;
    assert!(
        matches!(outcome[..], [Outcome::RetryAfter(_), Outcome::Poison]),
        "{outcome:?}"
    );
    assert_eq!(tries.load(Ordering::SeqCst), 2, "each tried once");
    // Not at its last attempt, it is held back untried.
    let outcome = callbacks::handle_batch(
        &deps,
        &[
            (job(MessageStatus::Sent, 1), 1),
            (job(MessageStatus::Delivered, 3), 1),
        ],
    )
    .await;
    assert!(
        matches!(
            outcome[..],
            [Outcome::RetryAfter(_), Outcome::RetryAfter(_)]
        ),
        "{outcome:?}"
    );
    assert_eq!(tries.load(Ordering::SeqCst), 3, "only the first tried");
}

on_both_backends!(
    a_status_for_a_number_no_tenant_has_is_not_kept,
    every_status_change_reaches_the_callback_signed_even_after_the_receiver_was_down,
    a_status_for_a_wamid_not_yet_known_is_kept_and_the_message_still_ends_read,
    kept_statuses_that_cannot_be_applied_after_the_send_bring_the_job_back_for_them,
    kept_statuses_a_job_comes_back_for_apply_though_its_tenant_was_suspended_meanwhile,
    the_callback_secret_is_write_only_and_bad_urls_are_refused_with_400,
    a_deadline_failure_and_a_cancelled_scheduled_message_reach_the_callback,
    a_callback_the_queue_refused_is_kept_and_queued_by_the_drain_once_the_queue_is_back,
    two_drains_at_once_queue_each_owed_callback_once,
    a_drain_that_stops_at_a_refusal_says_callbacks_are_still_owed,
);

/// A callback queue that records each message's group (and keeps nothing else).
#[derive(Default)]
struct Groups(Mutex<Vec<(Option<String>, String)>>);

#[async_trait]
impl kirim::ports::DispatchQueue for Groups {
    async fn send(&self, body: &str) -> Result<(), kirim::store_error::StoreError> {
        self.0.lock().unwrap().push((None, body.to_owned()));
        Ok(())
    }
    async fn send_in_group(
        &self,
        group: &str,
        body: &str,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.0
            .lock()
            .unwrap()
            .push((Some(group.to_owned()), body.to_owned()));
        Ok(())
    }
    async fn receive(
        &self,
        _: usize,
        _: Duration,
    ) -> Result<Vec<kirim::ports::Received>, kirim::store_error::StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &str) -> Result<(), kirim::store_error::StoreError> {
        Ok(())
    }
    async fn retry_after(
        &self,
        _: &str,
        _: Duration,
    ) -> Result<(), kirim::store_error::StoreError> {
        Ok(())
    }
    async fn dead_letters(
        &self,
        _: usize,
    ) -> Result<Vec<kirim::ports::DeadLetter>, kirim::store_error::StoreError> {
        Ok(Vec::new())
    }
    async fn redrive(
        &self,
        _: Option<&[String]>,
        _: usize,
    ) -> Result<kirim::ports::Redriven, kirim::store_error::StoreError> {
        Ok(kirim::ports::Redriven::default())
    }
}

/// One tenant's backlog must not hold back another's callbacks: each is queued in its
/// tenant's group (on SQS, a fair queue's `MessageGroupId`).
#[tokio::test]
async fn a_status_callback_is_queued_in_its_tenants_group() {
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(3).await;
    let (status, _) = set_callback(
        &app,
        &t.key,
        json!({"url": "https://hooks.example.com/kirim", "secret": CALLBACK_SECRET}),
    )
    .await;
    assert_eq!(status, 200);
    let id = app.send_ok(&t.key, "+60123450303").await;
    let mut deps = app.app.deps.clone();
    let groups = Arc::new(Groups::default());
    deps.callback_queue = groups.clone();
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let message = kirim::domain::MessageId::from_trusted(id.as_str());
    let mut record = deps
        .messages
        .get_message(&tenant, &message)
        .await
        .unwrap()
        .unwrap();
    record.status = kirim::domain::MessageStatus::Sent;
    kirim::service::callbacks::status_changed(&deps, &record).await;
    let queued = groups.0.lock().unwrap().clone();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].0.as_deref(), Some(t.tenant_id.as_str()));
    assert!(queued[0].1.contains(&id));
}

/// A callback queue that refuses every message while `refusing`, else records it in
/// its group as [`Groups`] does (each send taking a moment when `slow`).
#[derive(Default)]
struct Outage {
    refusing: std::sync::atomic::AtomicBool,
    slow: bool,
    queued: Groups,
}

#[async_trait]
impl kirim::ports::DispatchQueue for Outage {
    async fn send(&self, body: &str) -> Result<(), kirim::store_error::StoreError> {
        self.send_in_group("", body).await
    }
    async fn send_in_group(
        &self,
        group: &str,
        body: &str,
    ) -> Result<(), kirim::store_error::StoreError> {
        if self.refusing.load(Ordering::SeqCst) {
            return Err(kirim::store_error::StoreError::Unavailable(
                "sqs: service unavailable".into(),
            ));
        }
        if self.slow {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.queued.send_in_group(group, body).await
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<kirim::ports::Received>, kirim::store_error::StoreError> {
        self.queued.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), kirim::store_error::StoreError> {
        self.queued.delete(receipt).await
    }
    async fn retry_after(
        &self,
        receipt: &str,
        delay: Duration,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.queued.retry_after(receipt, delay).await
    }
    async fn dead_letters(
        &self,
        max: usize,
    ) -> Result<Vec<kirim::ports::DeadLetter>, kirim::store_error::StoreError> {
        self.queued.dead_letters(max).await
    }
    async fn redrive(
        &self,
        ids: Option<&[String]>,
        max: usize,
    ) -> Result<kirim::ports::Redriven, kirim::store_error::StoreError> {
        self.queued.redrive(ids, max).await
    }
}

/// A move is written once: a callback the queue refused then would never come again (a
/// redelivered status changes nothing). It is kept in the table instead, and the drain (the
/// retention function's one-minute schedule, local mode's timer) queues it once the queue
/// takes messages again, in its tenant's group, and forgets it.
async fn a_callback_the_queue_refused_is_kept_and_queued_by_the_drain_once_the_queue_is_back(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let (status, _) = set_callback(
        &app,
        &t.key,
        json!({"url": "https://hooks.example.com/kirim", "secret": CALLBACK_SECRET}),
    )
    .await;
    assert_eq!(status, 200);
    let id = app.send_ok(&t.key, "+60123450304").await;
    let mut deps = app.app.deps.clone();
    let queue = Arc::new(Outage::default());
    queue.refusing.store(true, Ordering::SeqCst);
    deps.callback_queue = queue.clone();
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let message = kirim::domain::MessageId::from_trusted(id.as_str());
    let mut record = deps
        .messages
        .get_message(&tenant, &message)
        .await
        .unwrap()
        .unwrap();
    record.status = kirim::domain::MessageStatus::Delivered;
    kirim::service::callbacks::status_changed(&deps, &record).await;
    let owed = deps.status_callbacks.owed_callbacks(10).await.unwrap();
    assert_eq!(owed.len(), 1, "kept: {owed:?}");
    assert_eq!((&owed[0].message_id, owed[0].sequence), (&message, 3));

    let drained = kirim::queue_handlers::owed_callbacks(&deps).await;
    assert_eq!(
        (drained.queued, drained.more),
        (0, true),
        "the queue is still out"
    );
    assert_eq!(
        deps.status_callbacks
            .owed_callbacks(10)
            .await
            .unwrap()
            .len(),
        1
    );

    queue.refusing.store(false, Ordering::SeqCst);
    let drained = kirim::queue_handlers::owed_callbacks(&deps).await;
    assert_eq!((drained.queued, drained.more), (1, false));
    let queued = queue.queued.0.lock().unwrap().clone();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].0.as_deref(), Some(t.tenant_id.as_str()));
    match kirim::service::jobs::QueueJob::parse(&queued[0].1) {
        Some(kirim::service::jobs::QueueJob::StatusCallback(job)) => {
            assert_eq!((job.message_id, job.status), (message, record.status));
        }
        other => panic!("not a status callback: {other:?}"),
    }
    assert!(deps
        .status_callbacks
        .owed_callbacks(10)
        .await
        .unwrap()
        .is_empty());
    let drained = kirim::queue_handlers::owed_callbacks(&deps).await;
    assert_eq!((drained.queued, drained.more), (0, false), "queued once");
}

/// Keeps `n` callbacks owed to the tenant, as the queue would have refused them.
async fn owe_many(deps: &kirim::service::Deps, tenant: &kirim::domain::TenantId, n: usize) {
    for i in 0..n {
        let message_id = kirim::domain::MessageId::generate();
        let owed = kirim::ports::OwedCallback {
            tenant_id: tenant.clone(),
            body: format!(r#"{{"kind":"status_callback","n":{i},"m":"{message_id}"}}"#),
            message_id,
            sequence: 1,
            owed_at: chrono::Utc::now(),
            expires_at: Some(chrono::Utc::now().timestamp() + 3600),
            leased_until: None,
        };
        deps.status_callbacks.owe_callback(&owed).await.unwrap();
    }
}

/// A drain stopped by the queue's refusal says callbacks are still owed, however many
/// (it used to count only what was left of its page: 100 of 150), and the next drain,
/// the queue back, queues them all and says none are.
async fn a_drain_that_stops_at_a_refusal_says_callbacks_are_still_owed(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let mut deps = app.app.deps.clone();
    let queue = Arc::new(Outage::default());
    queue.refusing.store(true, Ordering::SeqCst);
    deps.callback_queue = queue.clone();
    owe_many(&deps, &tenant, 150).await;
    let drained = kirim::queue_handlers::owed_callbacks(&deps).await;
    assert_eq!((drained.queued, drained.more), (0, true), "refused at once");
    queue.refusing.store(false, Ordering::SeqCst);
    let drained = kirim::queue_handlers::owed_callbacks(&deps).await;
    assert_eq!((drained.queued, drained.more), (150, false));
}

/// A drain that queued its most says more are owed when there are (it used to say one
/// was left, whatever the backlog), and none once the next drain queued the rest.
#[tokio::test]
async fn a_drain_that_stops_at_its_most_says_callbacks_are_still_owed() {
    use kirim::service::callbacks::{requeue_owed, REQUEUE_MAX};
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(3).await;
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let mut deps = app.app.deps.clone();
    let queue = Arc::new(Outage::default());
    deps.callback_queue = queue.clone();
    owe_many(&deps, &tenant, REQUEUE_MAX + 5).await;
    let drained = requeue_owed(&deps).await.unwrap();
    assert_eq!((drained.queued, drained.more), (REQUEUE_MAX, true));
    let drained = requeue_owed(&deps).await.unwrap();
    assert_eq!((drained.queued, drained.more), (5, false));
    // Exactly its most owed: nothing more.
    owe_many(&deps, &tenant, REQUEUE_MAX).await;
    let drained = requeue_owed(&deps).await.unwrap();
    assert_eq!((drained.queued, drained.more), (REQUEUE_MAX, false));
}

/// Two drains at once (the minute's schedule overlapping the last one, or the daily run's)
/// queue each owed callback once: each is leased before it is queued.
async fn two_drains_at_once_queue_each_owed_callback_once(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let mut deps = app.app.deps.clone();
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    for i in 0..150u32 {
        let message_id = kirim::domain::MessageId::generate();
        let owed = kirim::ports::OwedCallback {
            tenant_id: tenant.clone(),
            body: format!(r#"{{"kind":"status_callback","n":{i},"m":"{message_id}"}}"#),
            message_id,
            sequence: 1,
            owed_at: chrono::Utc::now(),
            expires_at: Some(chrono::Utc::now().timestamp() + 3600),
            leased_until: None,
        };
        deps.status_callbacks.owe_callback(&owed).await.unwrap();
    }
    let queue = Arc::new(Outage {
        slow: true,
        ..Default::default()
    });
    deps.callback_queue = queue.clone();
    let (a, b2) = tokio::join!(
        kirim::service::callbacks::requeue_owed(&deps),
        kirim::service::callbacks::requeue_owed(&deps)
    );
    let (a, b2) = (a.unwrap(), b2.unwrap());
    assert_eq!(a.queued + b2.queued, 150, "{a:?} {b2:?}");
    let queued = queue.queued.0.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<&String> = queued.iter().map(|(_, b)| b).collect();
    assert_eq!((queued.len(), distinct.len()), (150, 150), "each once");
    assert!(deps
        .status_callbacks
        .owed_callbacks(10)
        .await
        .unwrap()
        .is_empty());
}

/// On SQS the group is the message's `MessageGroupId` (what makes a standard queue a fair
/// one), and the callback queues keep what they hold a week, and two when parked (a
/// dead-letter queue counts from the original enqueue: kept no longer than its source, it
/// would drop a callback parked after days of retries at once).
/// The message group of the next message received from the queue at `url`.
pub(crate) async fn group_of_next(sqs: &aws_sdk_sqs::Client, url: &str) -> Option<String> {
    use aws_sdk_sqs::types::MessageSystemAttributeName as A;
    let got = sqs
        .receive_message()
        .queue_url(url)
        .message_system_attribute_names(A::MessageGroupId)
        .wait_time_seconds(2)
        .send()
        .await
        .expect("received");
    let m = got.messages().first().expect("a message");
    m.attributes()
        .and_then(|a| a.get(&A::MessageGroupId))
        .cloned()
}

#[tokio::test]
async fn on_sqs_a_callback_carries_its_group_and_parked_ones_outlive_their_queue() {
    use aws_sdk_sqs::types::QueueAttributeName as Q;
    use kirim::ports::DispatchQueue;
    let sdk = kirim_tests::moto_sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let stack = kirim_infra::bootstrap::ensure_stack(&sdk, &kirim_tests::unique_stack())
        .await
        .expect("stack");
    let url = stack.queue_url("StatusCallbackQueue").expect("queue");
    let queue = kirim::adapters::aws::SqsQueue::new(sqs.clone(), url.clone(), None);
    queue
        .send_in_group("01M8TENANTGROUP", r#"{"kind":"x"}"#)
        .await
        .expect("sent");
    assert_eq!(
        group_of_next(&sqs, &url).await.as_deref(),
        Some("01M8TENANTGROUP")
    );
    let retention = |url: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_attributes()
                .queue_url(url)
                .attribute_names(Q::MessageRetentionPeriod)
                .send()
                .await
                .expect("attributes")
                .attributes()
                .and_then(|a| a.get(&Q::MessageRetentionPeriod).cloned())
        }
    };
    assert_eq!(retention(url).await.as_deref(), Some("604800"));
    let dlq = stack
        .queue_url("StatusCallbackDeadLetterQueue")
        .expect("dlq");
    assert_eq!(retention(dlq).await.as_deref(), Some("1209600"));
}

/// A parked status callback is redriven in its tenant's message group, as it was sent:
/// a tenant's backlog after a receiver's outage stays paced fairly with the others'.
#[tokio::test]
async fn on_sqs_a_redriven_callback_goes_back_in_its_tenants_group() {
    use kirim::ports::DispatchQueue;
    let sdk = kirim_tests::moto_sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let stack = kirim_infra::bootstrap::ensure_stack(&sdk, &kirim_tests::unique_stack())
        .await
        .expect("stack");
    let url = stack.queue_url("StatusCallbackQueue").expect("queue");
    let dlq = stack
        .queue_url("StatusCallbackDeadLetterQueue")
        .expect("dlq");
    let queue = kirim::adapters::aws::SqsQueue::new(sqs.clone(), url.clone(), Some(dlq));
    queue
        .send_in_group("01M8TENANTREDRIVE", r#"{"kind":"x"}"#)
        .await
        .expect("sent");
    // Received and given up until the redrive parks it.
    for _ in 0..20 {
        let got = queue
            .receive(10, std::time::Duration::from_millis(300))
            .await
            .expect("received");
        if got.is_empty() {
            break;
        }
        for m in got {
            queue
                .retry_after(&m.receipt, std::time::Duration::ZERO)
                .await
                .expect("visible again");
        }
    }
    assert_eq!(queue.dead_letters(10).await.expect("listed").len(), 1);
    let moved = queue.redrive(None, 10).await.expect("redriven");
    assert_eq!(moved.moved.len(), 1, "{moved:?}");
    assert_eq!(
        group_of_next(&sqs, &url).await.as_deref(),
        Some("01M8TENANTREDRIVE"),
        "the callback, back in its group"
    );
}

/// What happens in the moment between a change's stored secret and its failed setting.
type Meanwhile = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// A callback-setting store whose writes fail (storage unavailable); reads go through.
struct SettingWritesFail(
    Arc<dyn kirim::ports::StatusCallbackStore>,
    /// Run before this write fails: another admin's change (made and answered), a
    /// callback delivered meanwhile.
    tokio::sync::Mutex<Option<Meanwhile>>,
);

kirim_tests::pass_through! {
    impl StatusCallbackStore for SettingWritesFail via 0 {
        async fn put_status_callback(
            &self,
            _: &kirim::ports::StatusCallback,
        ) -> Result<(), kirim::store_error::StoreError> {
            if let Some(meanwhile) = self.1.lock().await.take() {
                meanwhile().await;
            }
            Err(kirim::store_error::StoreError::Unavailable(
                "storage is down".into(),
            ))
        }
    }
}

/// A new secret whose setting could not be saved (the admin was answered an error) never
/// signs a callback: not on a sender whose cached copy ran out in the moment between the
/// secret's write and the setting's (Lambda's 5-minute cache, which then kept it), nor
/// after. It was made current before the setting's write and put back after its failure,
/// so a sender reading in between signed with it (and kept it up to 5 minutes); now it
/// is staged, and senders read the version the setting names.
#[tokio::test]
async fn a_callback_secret_change_that_fails_half_way_leaves_the_old_secret_signing() {
    use kirim::service::callbacks::{handle_batch, put_setting, CallbackUpdate};
    use kirim::service::SecretCache;
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(3).await;
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let (url, receiver) = receiver(0).await;
    let update = |secret: &str| -> CallbackUpdate {
        serde_json::from_value(json!({"url": url, "secret": secret})).unwrap()
    };
    let mut deps = app.app.deps.clone();
    // A sender as on Lambda: secrets cached 5 minutes.
    let store = deps.secrets.store().clone();
    deps.secrets = Arc::new(SecretCache::new(store, Duration::from_secs(300)));
    put_setting(&deps, &tenant, update(CALLBACK_SECRET))
        .await
        .expect("set");
    let sender = deps.clone();
    let sent = kirim::domain::MessageStatus::Sent;
    let (first, second) = (callback_job(&t, sent, 1), callback_job(&t, sent, 2));
    let mut failing = deps.clone();
    failing.status_callbacks = Arc::new(SettingWritesFail(
        deps.status_callbacks.clone(),
        tokio::sync::Mutex::new(Some(Box::new(move || {
            Box::pin(async move {
                assert_eq!(handle_batch(&sender, &[(first, 1)]).await, [Outcome::Done]);
            })
        }))),
    ));
    assert!(
        put_setting(&failing, &tenant, update("whsec_the_second_secret_002"))
            .await
            .is_err(),
        "answered an error"
    );
    assert_eq!(handle_batch(&deps, &[(second, 1)]).await, [Outcome::Done]);
    let got = receiver.wait_for(&["sent"]).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for g in &got {
        assert_eq!(
            g.signature,
            sign_with(CALLBACK_SECRET, g.body.as_bytes()),
            "signed with the secret the receiver was told"
        );
    }
    // Another admin's change lands (and is answered 200) while this one's setting write
    // fails: theirs signs, as they were told.
    let other = deps.clone();
    let tenant2 = tenant.clone();
    let url2 = url.clone();
    let mut failing = deps.clone();
    failing.status_callbacks = Arc::new(SettingWritesFail(
        deps.status_callbacks.clone(),
        tokio::sync::Mutex::new(Some(Box::new(move || {
            Box::pin(async move {
                let update: CallbackUpdate = serde_json::from_value(
                    json!({"url": url2, "secret": "whsec_the_other_admins_003"}),
                )
                .unwrap();
                put_setting(&other, &tenant2, update).await.unwrap();
            })
        }))),
    ));
    assert!(
        put_setting(&failing, &tenant, update("whsec_the_fourth_secret_04"))
            .await
            .is_err()
    );
    let third = callback_job(&t, sent, 3);
    assert_eq!(handle_batch(&deps, &[(third, 1)]).await, [Outcome::Done]);
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[2].signature,
        sign_with("whsec_the_other_admins_003", got[2].body.as_bytes()),
        "the other admin's secret, as they were told"
    );
    let name = kirim::service::callbacks::secret_name(&deps, &tenant);
    assert_eq!(
        deps.secrets.store().get_secret(&name).await.unwrap(),
        Some(Secret::new("whsec_the_other_admins_003")),
        "and it is the current version too"
    );
}
