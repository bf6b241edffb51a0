//! Failure drills and load runs against local mode as a separate OS process: the restart
//! test (`infra/tests/restart.rs`) and the load run (`kirim-load`, `scripts/load-reconcile`).
//!
//! - [`Platform`]: `kirim-local` started as a child process, stopped with `kill -9`.
//! - [`ExternalMeta`]: the Meta sandbox in *this* process, so what it accepted survives the
//!   platform's death, with a webhook [`relay`](ExternalMeta::relay) in front of the
//!   platform. Meta keeps retrying a webhook its receiver did not take for days; the
//!   sandbox gives up after a second. The relay takes each webhook at once and forwards it
//!   until the platform answers 2xx (bounded by [`RELAY_GIVE_UP`]), which is Meta's
//!   behaviour across a restart.
//! - [`reconcile`]: every message final as the sandbox's number says, no message accepted
//!   by Meta twice, and the credits equal to the ledger and to what Meta accepted.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::sandbox::{ReceivedRequest, Sandbox, SandboxConfig};

/// How long the relay keeps trying to hand one webhook to the platform.
pub const RELAY_GIVE_UP: Duration = Duration::from_secs(180);

/// `kirim-local` as a child process.
pub struct Platform {
    child: Child,
    pub base_url: String,
}

impl Platform {
    /// Starts `binary` with `envs` (on top of this process's environment), its output
    /// appended to `log`, and answers once `GET /health` answers 200 (within `ready_within`).
    pub async fn spawn(
        binary: &Path,
        envs: &[(String, String)],
        listen: &str,
        log: &Path,
        ready_within: Duration,
    ) -> Result<Platform, String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("log file {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("log file {}: {e}", log.display()))?;
        let child = Command::new(binary)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KIRIM_LISTEN", listen)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut platform = Platform {
            child,
            base_url: format!("http://{listen}"),
        };
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + ready_within;
        loop {
            if let Ok(Some(status)) = platform.child.try_wait() {
                return Err(format!(
                    "kirim-local exited ({status}) before it was ready; see {}",
                    log.display()
                ));
            }
            let health = http
                .get(format!("{}/health", platform.base_url))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(platform);
            }
            if tokio::time::Instant::now() > deadline {
                platform.kill_hard();
                return Err(format!(
                    "kirim-local was not ready within {ready_within:?}; see {}",
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: no shutdown hook, no flush, no goodbye; then reaps the process.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    /// The process id (for reports).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// Where `kirim-local` was built: beside the running executable (a `bin`), or one level up
/// (an integration test runs from `target/<profile>/deps`).
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Counters of the webhook relay.
#[derive(Default, Debug)]
pub struct RelayCounts {
    /// Webhooks the sandbox handed to the relay.
    pub received: AtomicU64,
    /// Webhooks the platform answered 2xx.
    pub applied: AtomicU64,
    /// Webhooks given up after [`RELAY_GIVE_UP`] (or refused with a 4xx).
    pub dropped: AtomicU64,
    /// Delivery attempts the platform did not take (down, restarting, 5xx).
    pub retried: AtomicU64,
}

impl RelayCounts {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }

    /// Webhooks received but neither applied nor dropped yet.
    pub fn in_flight(&self) -> u64 {
        Self::get(&self.received)
            .saturating_sub(Self::get(&self.applied))
            .saturating_sub(Self::get(&self.dropped))
    }
}

#[derive(Clone)]
struct RelayState {
    target: String,
    http: reqwest::Client,
    counts: Arc<RelayCounts>,
}

/// The Meta sandbox outside the platform's process, and the relay its webhooks go through.
pub struct ExternalMeta {
    pub sandbox: Sandbox,
    /// `KIRIM_META_BASE_URL` for the platform.
    pub graph_url: String,
    pub relay: Arc<RelayCounts>,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ExternalMeta {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ExternalMeta {
    /// Serves the sandbox's Graph API at `http://{addr}/graph`, its outbox at
    /// `/_sandbox/messages`, and the relay at `/relay`, which forwards to `platform_webhook`
    /// (the platform's fixed `/webhooks/meta` URL, alive or not).
    pub async fn start(
        app_secret: &str,
        platform_webhook: &str,
        status_delay: Duration,
        rate_limit_per_sec: u32,
    ) -> std::io::Result<ExternalMeta> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut cfg = SandboxConfig::new(app_secret, "100000000000001");
        cfg.webhook_url = Some(format!("http://{addr}/relay"));
        cfg.status_delay = status_delay;
        cfg.rate_limit_per_sec = rate_limit_per_sec;
        let sandbox = Sandbox::new(cfg);
        let counts = Arc::new(RelayCounts::default());
        let relay = RelayState {
            target: platform_webhook.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            counts: counts.clone(),
        };
        let router = Router::new()
            .nest("/graph", sandbox.graph_router())
            .merge(sandbox.inspect_router())
            .merge(
                Router::new()
                    .route("/relay", post(relay_webhook))
                    .with_state(relay),
            );
        // Like Meta, it finishes a request whose bytes arrived even when the caller dies
        // right after sending it (HTTP/1 half-close): a `kill -9` of Kirim mid-request must
        // not make a request that left Kirim vanish from the record.
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .half_close(true)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(ExternalMeta {
            sandbox,
            graph_url: format!("http://{addr}/graph"),
            relay: counts,
            addr,
            server,
        })
    }
}

async fn relay_webhook(
    State(relay): State<RelayState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    relay.counts.received.fetch_add(1, Ordering::SeqCst);
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    tokio::spawn(async move {
        let give_up = tokio::time::Instant::now() + RELAY_GIVE_UP;
        let mut backoff = Duration::from_millis(100);
        loop {
            let sent = relay
                .http
                .post(&relay.target)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", &signature)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    relay.counts.applied.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                // A 4xx will not get better (a bad signature): Meta stops too.
                Ok(r) if r.status().is_client_error() && r.status() != 429 => break,
                _ => {}
            }
            relay.counts.retried.fetch_add(1, Ordering::SeqCst);
            if tokio::time::Instant::now() > give_up {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        relay.counts.dropped.fetch_add(1, Ordering::SeqCst);
    });
    StatusCode::OK
}

/// What the sandbox does with a recipient, and so where its message must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Accepted once, then `read` (ordinary numbers, 0003 after two 130429, 0008).
    Read,
    /// Accepted once, then `failed` with this Meta code (0001: 131026), not refunded.
    FailedAfterAccept(i64),
    /// Never accepted: `failed` with this code (0004: 131000, 0007: 132001), refunded.
    Refused(i64),
    /// 0006: error 190 suspends the tenant; its message fails with 190 or, if the tenant
    /// was suspended before its turn, `tenant_suspended`; refunded either way.
    TokenExpired,
}

impl Expected {
    pub fn of(to: &str) -> Expected {
        let start = to.len().saturating_sub(4);
        match to.get(start..).unwrap_or_default() {
            "0001" => Expected::FailedAfterAccept(131026),
            "0002" => Expected::FailedAfterAccept(131050),
            "0004" => Expected::Refused(131000),
            "0006" => Expected::TokenExpired,
            "0007" => Expected::Refused(132001),
            _ => Expected::Read,
        }
    }

    /// The status webhooks the sandbox sends for an accepted message to `to`.
    pub fn webhooks(to: &str) -> u64 {
        let start = to.len().saturating_sub(4);
        match to.get(start..).unwrap_or_default() {
            "0001" | "0002" => 1,
            "0008" => 6,
            _ => 3,
        }
    }
}

/// A message's `error.code` as text (Meta's are numbers, Kirim's words).
fn error_code(m: &Value) -> String {
    match m.pointer("/error/code") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// True when the message is where it ends, as its number says; `failed` with
/// `outcome_unknown` is final too (an ambiguous send, settled by the sending deadline).
pub fn is_final(m: &Value) -> bool {
    let to = m["to"].as_str().unwrap_or_default();
    let status = m["status"].as_str().unwrap_or_default();
    let code = error_code(m);
    if status == "failed" && code == "outcome_unknown" {
        return true;
    }
    match Expected::of(to) {
        Expected::Read => status == "read",
        Expected::FailedAfterAccept(c) | Expected::Refused(c) => {
            status == "failed" && code == c.to_string()
        }
        Expected::TokenExpired => {
            status == "failed" && (code == "190" || code == "tenant_suspended")
        }
    }
}

/// The result of [`reconcile`] for one tenant.
#[derive(Debug, Default)]
pub struct Reconciliation {
    pub messages: usize,
    pub by_status: BTreeMap<String, usize>,
    /// Messages not (yet) where their number says they end: `id to status code`.
    pub not_final: Vec<String>,
    /// Messages the sandbox accepted more than once: `id (n)`.
    pub accepted_twice: Vec<String>,
    /// Messages the sandbox accepted: exactly once each.
    pub accepted_by_meta: usize,
    /// Requests the sandbox received for this tenant's messages (all answers).
    pub meta_requests: usize,
    /// Final with `outcome_unknown` (the request's answer was lost): charged by design.
    pub outcome_unknown: Vec<String>,
    pub opening: i64,
    pub credits: i64,
    /// Σ of every ledger entry (the opening top-up included).
    pub ledger_sum: i64,
    pub ledger_entries: usize,
    /// opening − the price of every message Meta accepted or whose outcome is unknown.
    pub expected_credits: i64,
    /// Messages whose own ledger entries do not net to what they should: `id: net vs want`.
    pub charge_mismatches: Vec<String>,
    /// Expected status webhooks for the messages Meta accepted.
    pub expected_webhooks: u64,
    /// The export did not end with its `end` line.
    pub export_incomplete: bool,
}

impl Reconciliation {
    /// Everything that is wrong; empty when the books balance.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.export_incomplete {
            p.push("the export did not end with its end line".to_owned());
        }
        if !self.not_final.is_empty() {
            p.push(format!(
                "{} message(s) not final: {:?}",
                self.not_final.len(),
                self.not_final
            ));
        }
        if !self.accepted_twice.is_empty() {
            p.push(format!(
                "Meta accepted {} message(s) more than once: {:?}",
                self.accepted_twice.len(),
                self.accepted_twice
            ));
        }
        if self.credits != self.ledger_sum {
            p.push(format!(
                "credits {} != the ledger's sum {}",
                self.credits, self.ledger_sum
            ));
        }
        if self.credits != self.expected_credits {
            p.push(format!(
                "credits {} != opening {} minus the price of what Meta accepted (or may have): {}",
                self.credits, self.opening, self.expected_credits
            ));
        }
        if !self.charge_mismatches.is_empty() {
            p.push(format!(
                "{} message(s) charged wrongly: {:?}",
                self.charge_mismatches.len(),
                self.charge_mismatches
            ));
        }
        p
    }
}

/// Reconciles one tenant: `export` is its `GET /v1/account/export` lines, `credits` its
/// balance now, `opening` the credits it was onboarded with, `meta` everything the sandbox
/// received (any tenant's; matched by `biz_opaque_callback_data`, `{message id}.{tenant id}`,
/// or the message id alone as sends before stop 59 carried it).
pub fn reconcile(
    opening: i64,
    credits: i64,
    export: &[Value],
    meta: &[ReceivedRequest],
) -> Reconciliation {
    let mut r = Reconciliation {
        opening,
        credits,
        export_incomplete: export.last().is_none_or(|l| l["type"] != "end"),
        ..Reconciliation::default()
    };
    let mut requests: HashMap<&str, (usize, usize)> = HashMap::new();
    for q in meta {
        if let Some(callback) = q.request["biz_opaque_callback_data"].as_str() {
            let id = callback.split('.').next().unwrap_or(callback);
            let e = requests.entry(id).or_default();
            e.0 += 1;
            if q.response.status == 200 {
                e.1 += 1;
            }
        }
    }
    let mut net: HashMap<&str, (i64, i64)> = HashMap::new(); // (debits, refunds)
    for l in export.iter().filter(|l| l["type"] == "ledger_entry") {
        let amount = l["amount"].as_i64().unwrap_or_default();
        r.ledger_sum += amount;
        r.ledger_entries += 1;
        if let Some(id) = l["message_id"].as_str() {
            let e = net.entry(id).or_default();
            if amount < 0 {
                e.0 += -amount;
            } else {
                e.1 += amount;
            }
        }
    }
    r.expected_credits = opening;
    for m in export.iter().filter(|l| l["type"] == "message") {
        let id = m["id"].as_str().unwrap_or_default();
        let to = m["to"].as_str().unwrap_or_default();
        let status = m["status"].as_str().unwrap_or_default().to_owned();
        let code = error_code(m);
        r.messages += 1;
        *r.by_status.entry(status.clone()).or_default() += 1;
        if !is_final(m) {
            r.not_final
                .push(format!("{id} …{} {status} {code}", tail(to)));
        }
        let (sent, accepted) = requests.get(id).copied().unwrap_or_default();
        r.meta_requests += sent;
        if accepted > 1 {
            r.accepted_twice.push(format!("{id} ({accepted})"));
        }
        let unknown = code == "outcome_unknown";
        if unknown {
            r.outcome_unknown
                .push(format!("{id} …{} requests={sent}", tail(to)));
        }
        if accepted > 0 {
            r.accepted_by_meta += 1;
            r.expected_webhooks += Expected::webhooks(to);
        }
        let (debited, refunded) = net.get(id).copied().unwrap_or_default();
        let charged = accepted > 0 || unknown;
        let want = if charged { debited } else { 0 };
        if charged {
            r.expected_credits -= debited;
        }
        if debited - refunded != want {
            r.charge_mismatches.push(format!(
                "{id} …{} {status}: debited {debited}, refunded {refunded}, meta accepted {accepted}",
                tail(to)
            ));
        }
    }
    r
}

/// The last four digits of a number (logs and reports never show whole numbers).
fn tail(to: &str) -> &str {
    to.get(to.len().saturating_sub(4)..).unwrap_or_default()
}

/// A thin client of the platform's HTTP API.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base_url: String,
    pub operator_token: String,
}

/// The answer to one send.
#[derive(Debug)]
pub enum SendAnswer {
    Accepted(String),
    /// Any other HTTP answer: the status and the error code.
    Refused(u16, String),
    /// No answer (the connection failed or was cut).
    NoAnswer,
}

/// The sandbox catalogue's `order_update` (utility, one body parameter) as a send names it.
fn order_update() -> Value {
    json!({
        "name": "order_update",
        "language": "en_US",
        "category": "utility",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "ORDER-1"}]}],
    })
}

impl Client {
    pub fn new(base_url: &str, operator_token: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            base_url: base_url.to_owned(),
            operator_token: operator_token.to_owned(),
        }
    }

    /// Onboards a tenant; answers (tenant id, admin API key).
    pub async fn onboard(
        &self,
        name: &str,
        phone_number_id: &str,
        credits: i64,
    ) -> Result<(String, String), String> {
        let res = self
            .http
            .post(format!("{}/v1/platform/tenants", self.base_url))
            .bearer_auth(&self.operator_token)
            .json(&json!({
                "name": name,
                "waba_id": "1000001",
                "phone_number_id": phone_number_id,
                "meta_access_token": "EAAG-drill-token",
                "credits": credits,
            }))
            .send()
            .await
            .map_err(|e| format!("onboard: {e}"))?;
        let status = res.status();
        let body: Value = res.json().await.map_err(|e| format!("onboard: {e}"))?;
        match (
            body["tenant"]["id"].as_str(),
            body["admin_api_key"].as_str(),
        ) {
            (Some(t), Some(k)) if status == 201 => Ok((t.to_owned(), k.to_owned())),
            _ => Err(format!("onboard answered {status}")),
        }
    }

    /// Sets a tenant's Meta throughput tier (20, 80 or 1000 a second).
    pub async fn set_throughput(&self, tenant_id: &str, per_sec: u32) -> Result<(), String> {
        let res = self
            .http
            .put(format!(
                "{}/v1/platform/tenants/{tenant_id}/throughput",
                self.base_url
            ))
            .bearer_auth(&self.operator_token)
            .json(&json!({ "per_sec": per_sec }))
            .send()
            .await
            .map_err(|e| format!("throughput: {e}"))?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!("throughput answered {}", res.status()))
        }
    }

    /// One template send (`order_update`, utility) with an `Idempotency-Key`.
    pub async fn send(&self, key: &str, to: &str, idempotency_key: &str) -> SendAnswer {
        let sent = self
            .http
            .post(format!("{}/v1/messages", self.base_url))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency_key)
            .json(&json!({
                "to": to,
                "template": order_update(),
            }))
            .send()
            .await;
        let Ok(res) = sent else {
            return SendAnswer::NoAnswer;
        };
        let status = res.status().as_u16();
        let Ok(body) = res.json::<Value>().await else {
            return SendAnswer::NoAnswer;
        };
        match body["id"].as_str() {
            Some(id) if status == 202 => SendAnswer::Accepted(id.to_owned()),
            _ => SendAnswer::Refused(
                status,
                body.pointer("/error/code")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
        }
    }

    /// A broadcast of `order_update` (utility) to `recipients`; answers its id.
    pub async fn broadcast(&self, key: &str, recipients: &[String]) -> Result<String, String> {
        let res = self
            .http
            .post(format!("{}/v1/broadcasts", self.base_url))
            .bearer_auth(key)
            .json(&json!({
                "recipients": recipients,
                "template": order_update(),
            }))
            .send()
            .await
            .map_err(|e| format!("broadcast: {e}"))?;
        let status = res.status();
        let body: Value = res.json().await.map_err(|e| format!("broadcast: {e}"))?;
        match body["id"].as_str() {
            Some(id) if status == 202 || status == 201 => Ok(id.to_owned()),
            _ => Err(format!("broadcast answered {status}: {body}")),
        }
    }

    /// `POST /v1/broadcasts/{id}/{action}` (`pause`, `resume`, `cancel`), answered `200`.
    pub async fn broadcast_control(&self, key: &str, id: &str, action: &str) -> Result<(), String> {
        let res = self
            .http
            .post(format!("{}/v1/broadcasts/{id}/{action}", self.base_url))
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| format!("{action}: {e}"))?;
        match res.status().as_u16() {
            200 => Ok(()),
            s => Err(format!(
                "{action} answered {s}: {}",
                res.text().await.unwrap_or_default()
            )),
        }
    }

    /// The tenant's balance.
    pub async fn credits(&self, key: &str) -> Result<i64, String> {
        let body: Value = self
            .http
            .get(format!("{}/v1/account", self.base_url))
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| format!("account: {e}"))?
            .json()
            .await
            .map_err(|e| format!("account: {e}"))?;
        body["credits"]
            .as_i64()
            .ok_or_else(|| "account without credits".to_owned())
    }

    /// `GET /v1/account/export`: every line, parsed.
    pub async fn export(&self, key: &str) -> Result<Vec<Value>, String> {
        let text = self
            .http
            .get(format!("{}/v1/account/export", self.base_url))
            .bearer_auth(key)
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .map_err(|e| format!("export: {e}"))?
            .text()
            .await
            .map_err(|e| format!("export: {e}"))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("export line: {e}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::RecordedResponse;

    fn message(id: &str, to: &str, status: &str, code: Option<Value>) -> Value {
        json!({"type": "message", "id": id, "to": to, "status": status,
               "error": code.map(|c| json!({"code": c}))})
    }

    fn ledger(amount: i64, message_id: Option<&str>) -> Value {
        json!({"type": "ledger_entry", "amount": amount, "message_id": message_id})
    }

    fn meta(id: &str, status: u16) -> ReceivedRequest {
        ReceivedRequest {
            received_at: chrono::Utc::now(),
            phone_number_id: "1".into(),
            version: "v23.0".into(),
            request: json!({"biz_opaque_callback_data": id}),
            response: RecordedResponse {
                status,
                body: json!({}),
            },
            token_sha256: None,
        }
    }

    #[test]
    fn balanced_books_have_no_problems() {
        let export = vec![
            json!({"type": "export"}),
            message("a", "+60120000001", "failed", Some(json!(131026))),
            message("b", "+60120000004", "failed", Some(json!(131000))),
            message("c", "+60120000123", "read", None),
            ledger(10, None),
            ledger(-1, Some("a")),
            ledger(-1, Some("b")),
            ledger(1, Some("b")),
            ledger(-1, Some("c")),
            json!({"type": "end"}),
        ];
        // `c`'s request in the callback form of sends since stop 59 (the tenant after the id).
        let meta = vec![
            meta("a", 200),
            meta("b", 500),
            meta("c.01M94DBHM40P0CP778A1XHSK2V", 200),
        ];
        let r = reconcile(10, 8, &export, &meta);
        assert_eq!(r.problems(), Vec::<String>::new());
        assert_eq!(r.accepted_by_meta, 2);
        assert_eq!(r.expected_webhooks, 4);
    }

    #[test]
    fn a_double_send_a_stuck_message_and_a_missing_refund_are_each_reported() {
        let export = vec![
            message("a", "+60120000123", "read", None),
            message("b", "+60120000007", "failed", Some(json!(132001))),
            message("c", "+60120000124", "sending", None),
            ledger(10, None),
            ledger(-1, Some("a")),
            ledger(-1, Some("b")),
            ledger(-1, Some("c")),
            json!({"type": "end"}),
        ];
        let meta = vec![meta("a", 200), meta("a", 200), meta("b", 404)];
        let problems = reconcile(10, 7, &export, &meta).problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("not final"));
        assert!(problems[1].contains("more than once"));
        assert!(problems[2].contains("minus the price"));
        assert!(problems[3].contains("charged wrongly"));
    }

    #[test]
    fn an_outcome_unknown_message_is_final_and_stays_charged() {
        let export = vec![
            message(
                "a",
                "+60120000123",
                "failed",
                Some(json!("outcome_unknown")),
            ),
            ledger(5, None),
            ledger(-1, Some("a")),
            json!({"type": "end"}),
        ];
        let r = reconcile(5, 4, &export, &[]);
        assert_eq!(r.problems(), Vec::<String>::new());
        assert_eq!(r.outcome_unknown.len(), 1);
    }
}
