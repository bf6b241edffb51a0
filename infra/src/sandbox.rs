//! The Meta Cloud API sandbox: answers `POST /{version}/{phone_number_id}/messages` the way Meta
//! does (request bodies checked against Meta's own spec, see [`crate::meta_schema`]), then sends
//! signed status webhooks to the platform. The recipient's last four digits choose the behaviour
//! (see `API.md`, "Local mode and the sandbox"):
//!
//! | ends in | behaviour |
//! |---|---|
//! | 0001 | accepted, then a `failed` status with error 131026 |
//! | 0002 | accepted, then `failed` with 131050 |
//! | 0003 | error 130429 (HTTP 429) twice, then accepted: every message, counted per (phone number id, recipient, the send's `biz_opaque_callback_data`) |
//! | 0004 | error 131000 (HTTP 500) on every try |
//! | 0005 | answers after `slow_delay`, then as "other" |
//! | 0006 | error 190, access token expired (HTTP 401) |
//! | 0007 | error 132001, template does not exist (HTTP 404) |
//! | 0008 | accepted, statuses out of order: read, read, delivered, delivered, sent, sent |
//! | other | accepted, then sent, delivered, read |
//!
//! Before the recipient is looked at: no `Authorization: Bearer` token → 401 with code 190; a
//! request for a phone number id that had `rate_limit_per_sec` requests let through within the
//! rolling second → 429 with code 130429 (a refused one does not count); a body that is not JSON or fails the spec → 400 with code 100.
//!
//! Every request is handled in its own task, so a client that gives up (the point of 0005) does
//! not cancel it: the request is still recorded and its statuses still sent, as at Meta.
//! `GET /_sandbox/messages` lists what was received, oldest first, with the answer given.
//!
//! Pricing, as Meta reports it: every `sent`, `delivered` and `read` status carries Meta's
//! `pricing` (`pricing_model` `PMP`; a template's catalogue `category` and type `regular`;
//! a session message category `service`, type `free_customer_service` within 24 hours of
//! an inbound message from that user to that number, else `regular`).
//! A user's inbound message (`POST /_sandbox/inbound`, below) is what the sandbox remembers
//! for that.
//!
//! Templates, as Meta keeps them per WhatsApp Business Account (API.md "Template catalogue"):
//! every WABA starts with the same catalogue ([`default_catalogue`]) until
//! `PUT /_sandbox/templates/{waba_id}/{name}/{language}`
//! `{"status"?,"category"?,"quality"?,"body_parameters"?}` changes one template and sends
//! Meta's matching signed webhook (`message_template_status_update`,
//! `template_category_update`, `message_template_quality_update`; an edit of the body's
//! parameter count sends none, as at Meta); one the WABA does not have is created when the
//! change names its `category` (`PENDING` unless a `status` is given).
//! `GET /{version}/{waba_id}/message_templates` lists a catalogue in pages of at most
//! [`TEMPLATE_PAGE_SIZE`] (small, so clients page), with Meta's `paging.cursors.after` and
//! `paging.next`, and Meta's `name` filter (here: that exact name). A template send is checked against the catalogue
//! of the WABA whose templates its access token last listed (a Meta token belongs to one
//! business), else of the sandbox's own WABA (`SandboxConfig::waba_id`): a template it does
//! not have (or one not approved: pending, rejected, archived) answers 132001, a paused one
//! 132015, a disabled one 132016, another number of body parameters 132000. Like Meta,
//! component `type` values are read in any case (`BODY`, `body`) and location coordinates
//! as numbers or strings.
//!
//! A user writing in: `POST /_sandbox/inbound` `{"phone_number_id","from"?,"user_id"?,
//! "text"?|"button"?}` sends Meta's signed `messages` webhook of one inbound message (now,
//! as Meta times it: `from` digits and/or `from_user_id`, with the matching `contacts`
//! entry; a `text` body, or a quick-reply `button` payload and text) and answers whether
//! the platform took it. This opens the user's 24-hour customer-service window, and a
//! `STOP` text or button opts them out, as at Meta.
//!
//! Business numbers, as Meta describes them: `GET /{version}/{phone_number_id}?fields=`
//! answers the number's `id`, `display_phone_number`, `verified_name` and `quality_rating`
//! (Meta's defaults) and, asked for, `throughput` (`{"level": ...}`), `messaging_limit_tier`,
//! `name_status`, `code_verification_status` and `status`; another field is refused with
//! Meta's 100. Every number starts as [`SandboxNumber::of`] says (green, `STANDARD`, its
//! display made from its id) until `PUT /_sandbox/phone-numbers/{phone_number_id}`
//! `{"quality_rating"?,"throughput"?,"messaging_limit_tier"?,"name_status"?,
//! "verified_name"?,"display_phone_number"?,"error"?,"send_error"?,"waba_id"?}` (Meta's words: `GREEN`, `HIGH`...)
//! changes it. It sends no webhook: what the platform learns of it, it learns by reading
//! the number (a change whose webhook was lost, or one made before the number was added).
//! `"error": code` makes every read of the number answer Meta's error with that code
//! (`null` ends it). `"waba_id"` says which WABA the number belongs to: its webhooks
//! (inbound messages, statuses) name it as their `entry[].id`, as Meta's name the number's
//! own WABA. A number not told one takes the WABA whose catalogue the token that last sent
//! from it listed, else the sandbox's own (`SandboxConfig::waba_id`).
//!
//! `POST /{version}/{waba_id}/subscribed_apps` subscribes "the app" to a WABA's webhooks
//! (`{"success": true}`, as Meta answers) and `GET` on it lists the app once it was; the
//! sandbox sends its webhooks either way ([`Sandbox::subscribed`] tells tests it was asked).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::meta_schema::MetaSchema;

/// How many requests `GET /_sandbox/messages` keeps; the oldest are dropped beyond this.
pub const OUTBOX_CAPACITY: usize = 50_000;
/// Attempts per status webhook (the first delivery and its retries).
const WEBHOOK_ATTEMPTS: u32 = 4;
/// Delay before the first retry of a webhook; doubles on each further retry.
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(100);
/// Per-attempt timeout of a webhook delivery.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Rate-limit windows kept before idle ones are pruned.
const MAX_TRACKED_PHONE_NUMBERS: usize = 1024;
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// How many 0003 messages' counts are kept at most (then they start again).
const THROTTLED_KEPT: usize = 10_000;

/// How many answers of 130429 each message to a 0003 recipient gets before it is accepted.
const THROTTLED_ATTEMPTS: u32 = 2;
/// Templates per page of `GET /{version}/{waba_id}/message_templates` at most.
pub const TEMPLATE_PAGE_SIZE: usize = 2;

/// One template of a sandbox WABA, as Meta words it (`UTILITY`, `APPROVED`, `GREEN`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SandboxTemplate {
    pub id: String,
    pub name: String,
    pub language: String,
    pub category: String,
    pub status: String,
    pub quality: String,
    pub body_parameters: u32,
}

impl SandboxTemplate {
    fn new(id: u32, name: &str, category: &str, status: &str, body_parameters: u32) -> Self {
        Self {
            id: format!("{}", 900_000_000_000_000u64 + u64::from(id)),
            name: name.into(),
            language: "en_US".into(),
            category: category.into(),
            status: status.into(),
            quality: "GREEN".into(),
            body_parameters,
        }
    }

    /// The template as Meta lists it: its body text has one `{{n}}` per parameter.
    fn to_meta(&self) -> Value {
        let mut text = format!("A {} message from the sandbox.", self.name);
        for i in 1..=self.body_parameters {
            text.push_str(&format!(" {{{{{i}}}}}"));
        }
        json!({
            "id": self.id,
            "name": self.name,
            "language": self.language,
            "category": self.category,
            "status": self.status,
            "parameter_format": "POSITIONAL",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Kirim sandbox"},
                {"type": "BODY", "text": text},
                {"type": "FOOTER", "text": "Reply STOP to opt out"}
            ],
            "quality_score": {"score": self.quality, "date": 1_700_000_000},
        })
    }
}

/// The catalogue every sandbox WABA starts with (API.md "Template catalogue").
pub fn default_catalogue() -> Vec<SandboxTemplate> {
    vec![
        SandboxTemplate::new(1, "order_update", "UTILITY", "APPROVED", 1),
        SandboxTemplate::new(2, "promo_sale", "MARKETING", "APPROVED", 1),
        SandboxTemplate::new(3, "login_code", "AUTHENTICATION", "APPROVED", 1),
        SandboxTemplate::new(4, "paused_promo", "MARKETING", "PAUSED", 1),
        SandboxTemplate::new(5, "pending_notice", "UTILITY", "PENDING", 0),
    ]
}

/// One business number of the sandbox, as Meta words it (`GREEN`, `HIGH`, `TIER_1K`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SandboxNumber {
    pub display_phone_number: String,
    pub verified_name: String,
    pub quality_rating: String,
    /// `throughput.level`: `STANDARD`, `HIGH` or `NOT_APPLICABLE`.
    pub throughput: String,
    pub messaging_limit_tier: String,
    pub name_status: String,
    /// Meta's error code every read of the number answers, while set.
    pub error: Option<u32>,
    /// Meta's error code every send from the number answers, while set (131048: Meta's
    /// spam rate limit on the number).
    pub send_error: Option<u32>,
    /// The WABA the number belongs to, as the sandbox was told
    /// (`PUT /_sandbox/phone-numbers/{id}` `{"waba_id"}`): its webhooks' `entry[].id`.
    /// `None`: the one learned from its sends, else the sandbox's own ([`Sandbox::waba_of`]).
    pub waba_id: Option<String>,
}

impl SandboxNumber {
    /// A number the sandbox was told nothing of: green, standard throughput, its display
    /// made from its id.
    pub fn of(phone_number_id: &str) -> Self {
        SandboxNumber {
            display_phone_number: display_phone_number(phone_number_id),
            verified_name: "Kirim Sandbox".into(),
            quality_rating: "GREEN".into(),
            throughput: "STANDARD".into(),
            messaging_limit_tier: "TIER_1K".into(),
            name_status: "APPROVED".into(),
            error: None,
            send_error: None,
            waba_id: None,
        }
    }

    /// The number as Meta answers it, with the fields asked for.
    fn to_meta(&self, phone_number_id: &str, fields: &[&str]) -> Value {
        let mut out = json!({
            "id": phone_number_id,
            "display_phone_number": self.display_phone_number,
            "verified_name": self.verified_name,
            "quality_rating": self.quality_rating,
        });
        for f in fields {
            let v = match *f {
                "throughput" => json!({"level": self.throughput}),
                "messaging_limit_tier" => json!(self.messaging_limit_tier),
                "name_status" => json!(self.name_status),
                "code_verification_status" => json!("VERIFIED"),
                "status" => json!("CONNECTED"),
                _ => continue,
            };
            out[*f] = v;
        }
        out
    }
}

/// The fields of a number `GET /{version}/{phone_number_id}` answers.
const NUMBER_FIELDS: [&str; 9] = [
    "id",
    "display_phone_number",
    "verified_name",
    "quality_rating",
    "throughput",
    "messaging_limit_tier",
    "name_status",
    "code_verification_status",
    "status",
];

/// Settings of a [`Sandbox`].
#[derive(Clone)]
pub struct SandboxConfig {
    /// Where status webhooks go; `None` sends none. Settable later with
    /// [`Sandbox::set_webhook_url`].
    pub webhook_url: Option<String>,
    /// The Meta app secret: webhooks carry `X-Hub-Signature-256: sha256=HMAC(app_secret, body)`.
    pub app_secret: String,
    /// The WhatsApp Business Account id put in `entry[].id` of webhooks.
    pub waba_id: String,
    /// The wait before each status webhook of a message.
    pub status_delay: Duration,
    /// How long a recipient ending in 0005 makes the sandbox wait before answering.
    pub slow_delay: Duration,
    /// Attempts allowed per phone number id within any rolling second; 0 means no limit.
    pub rate_limit_per_sec: u32,
}

impl SandboxConfig {
    pub const DEFAULT_STATUS_DELAY: Duration = Duration::from_millis(200);
    pub const DEFAULT_SLOW_DELAY: Duration = Duration::from_secs(30);
    pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 80;

    /// The defaults (no webhook URL yet, 200 ms between statuses, 30 s for 0005, 80 per second)
    /// with the given app secret and WABA id.
    pub fn new(app_secret: impl Into<String>, waba_id: impl Into<String>) -> SandboxConfig {
        SandboxConfig {
            webhook_url: None,
            app_secret: app_secret.into(),
            waba_id: waba_id.into(),
            status_delay: Self::DEFAULT_STATUS_DELAY,
            slow_delay: Self::DEFAULT_SLOW_DELAY,
            rate_limit_per_sec: Self::DEFAULT_RATE_LIMIT_PER_SEC,
        }
    }
}

impl Default for SandboxConfig {
    /// [`SandboxConfig::new`] with placeholder credentials: app secret `sandbox-app-secret`,
    /// WABA id `100000000000001`.
    fn default() -> SandboxConfig {
        SandboxConfig::new("sandbox-app-secret", "100000000000001")
    }
}

impl std::fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("webhook_url", &self.webhook_url)
            .field("app_secret", &"<redacted>")
            .field("waba_id", &self.waba_id)
            .field("status_delay", &self.status_delay)
            .field("slow_delay", &self.slow_delay)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .finish()
    }
}

/// One request the sandbox received, with the answer it gave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceivedRequest {
    pub received_at: DateTime<Utc>,
    pub phone_number_id: String,
    pub version: String,
    /// The body as JSON; a body that is not JSON is kept as a JSON string of its text.
    pub request: Value,
    pub response: RecordedResponse,
    /// SHA-256 (hex) of the request's bearer access token, never the token itself: which
    /// token a send went with (a replaced token's first sends).
    #[serde(default)]
    pub token_sha256: Option<String>,
}

/// The answer the sandbox gave to a [`ReceivedRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedResponse {
    pub status: u16,
    pub body: Value,
}

/// The sandbox. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("waba_id", &self.inner.waba_id)
            .field("webhook_url", &self.inner.webhook_url())
            .finish_non_exhaustive()
    }
}

struct Inner {
    app_secret: String,
    waba_id: String,
    status_delay: Duration,
    slow_delay: Duration,
    rate_limit_per_sec: u32,
    webhook_url: Mutex<Option<String>>,
    state: Mutex<SandboxState>,
    next_seq: AtomicU64,
    http: reqwest::Client,
    schema: &'static MetaSchema,
}

#[derive(Default)]
struct SandboxState {
    /// Bumped by reset: work started before it is neither recorded nor continued.
    epoch: u64,
    /// Sorted by arrival sequence number.
    outbox: VecDeque<(u64, ReceivedRequest)>,
    /// Attempts so far of a message to a 0003 recipient, per (phone number id, recipient
    /// digits, the send's `biz_opaque_callback_data`: Kirim's message and tenant ids);
    /// removed when one is accepted. Keyed by the message too, so one that stopped being
    /// tried after a 130429 (failed while it waited) leaves the next message its own two.
    throttled: HashMap<(String, String, Option<String>), u32>,
    /// The most recent attempts per phone number id (at most the limit + 1).
    windows: HashMap<String, VecDeque<Instant>>,
    /// WABAs whose catalogue was changed; the others have [`default_catalogue`].
    catalogues: HashMap<String, Vec<SandboxTemplate>>,
    /// SHA-256 of an access token → the WABA whose templates it last listed: a send with
    /// that token is checked against that WABA's catalogue (a Meta token belongs to one
    /// business; the sandbox learns which one by its use).
    token_wabas: HashMap<String, String>,
    /// (phone number id, user digits) → when the sandbox last sent an inbound message from
    /// that user to that number (`POST /_sandbox/inbound`): a session text sent within 24
    /// hours of it is priced `free_customer_service`.
    inbound: HashMap<(String, String), Instant>,
    /// WABAs the app was subscribed to (`POST /{version}/{waba_id}/subscribed_apps`).
    subscribed: std::collections::HashSet<String>,
    /// Numbers changed by `PUT /_sandbox/phone-numbers/{id}`; the others are
    /// [`SandboxNumber::of`].
    numbers: HashMap<String, SandboxNumber>,
    /// Phone number id → the WABA of the token that last sent from it (`token_wabas`),
    /// for a number the sandbox was not told the WABA of.
    number_wabas: HashMap<String, String>,
}

impl Sandbox {
    pub fn new(cfg: SandboxConfig) -> Sandbox {
        let http = reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Sandbox {
            inner: Arc::new(Inner {
                app_secret: cfg.app_secret,
                waba_id: cfg.waba_id,
                status_delay: cfg.status_delay,
                slow_delay: cfg.slow_delay,
                rate_limit_per_sec: cfg.rate_limit_per_sec,
                webhook_url: Mutex::new(cfg.webhook_url),
                state: Mutex::new(SandboxState::default()),
                next_seq: AtomicU64::new(0),
                http,
                // Compiled here, not on the first request.
                schema: MetaSchema::shared(),
            }),
        }
    }

    /// Sets where status webhooks go (the platform's URL is known only once it is bound).
    /// Statuses not yet sent go to the new URL.
    pub fn set_webhook_url(&self, url: String) {
        *lock(&self.inner.webhook_url) = Some(url);
    }

    /// The Graph API: `POST /{version}/{phone_number_id}/messages`,
    /// `GET /{version}/{waba_id}/message_templates`, `POST`/`GET
    /// /{version}/{waba_id}/subscribed_apps` and `GET /{version}/{phone_number_id}`.
    pub fn graph_router(&self) -> Router {
        Router::new()
            .route("/{version}/{id}/messages", post(send_message))
            .route("/{version}/{id}/message_templates", get(list_templates))
            .route(
                "/{version}/{id}/subscribed_apps",
                post(subscribe_app).get(subscribed_apps),
            )
            .route("/{version}/{id}", get(get_phone_number))
            .with_state(self.clone())
    }

    /// `GET /_sandbox/messages` (the outbox, oldest first), `POST /_sandbox/reset`,
    /// `POST /_sandbox/inbound`, `PUT /_sandbox/templates/{waba_id}/{name}/{language}` and
    /// `PUT /_sandbox/phone-numbers/{phone_number_id}`.
    pub fn inspect_router(&self) -> Router {
        Router::new()
            .route("/_sandbox/messages", get(list_messages))
            .route("/_sandbox/reset", post(reset))
            .route(
                "/_sandbox/templates/{waba_id}/{name}/{language}",
                put(put_template),
            )
            .route("/_sandbox/inbound", post(post_inbound))
            .route(
                "/_sandbox/phone-numbers/{phone_number_id}",
                put(put_phone_number),
            )
            .with_state(self.clone())
    }

    /// A business number as it stands.
    pub fn phone_number(&self, phone_number_id: &str) -> SandboxNumber {
        lock(&self.inner.state)
            .numbers
            .get(phone_number_id)
            .cloned()
            .unwrap_or_else(|| SandboxNumber::of(phone_number_id))
    }

    /// The WABA a number's webhooks name (`entry[].id`, as Meta's name the number's own):
    /// the one `PUT /_sandbox/phone-numbers/{id}` gave it, else the one whose catalogue the
    /// token that last sent from it listed, else the sandbox's own
    /// (`SandboxConfig::waba_id`).
    pub fn waba_of(&self, phone_number_id: &str) -> String {
        self.inner.waba_of(phone_number_id)
    }

    /// Whether the app was subscribed to the WABA's webhooks (since the last reset).
    pub fn subscribed(&self, waba_id: &str) -> bool {
        lock(&self.inner.state).subscribed.contains(waba_id)
    }

    /// A WABA's catalogue as it stands.
    pub fn templates(&self, waba_id: &str) -> Vec<SandboxTemplate> {
        lock(&self.inner.state)
            .catalogues
            .get(waba_id)
            .cloned()
            .unwrap_or_else(default_catalogue)
    }

    /// Every request received so far (up to [`OUTBOX_CAPACITY`]), oldest first, each with the
    /// answer given. A request still being answered (0005) appears once answered.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        lock(&self.inner.state)
            .outbox
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Forgets the outbox, the 0003 counters, the rate-limit windows, changed catalogues
    /// and changed numbers;
    /// statuses of earlier messages not yet sent are dropped.
    pub fn reset(&self) {
        let mut state = lock(&self.inner.state);
        let epoch = state.epoch.wrapping_add(1);
        *state = SandboxState {
            epoch,
            ..SandboxState::default()
        };
    }
}

/// Locks a mutex, carrying on after a panic elsewhere (the state stays usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn send_message(
    State(sandbox): State<Sandbox>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Utc::now();
    let seq = sandbox.inner.next_seq.fetch_add(1, Ordering::Relaxed);
    let inner = sandbox.inner.clone();
    // Detached: a client that hangs up does not cancel the send.
    let task = tokio::spawn(async move {
        let request = Incoming {
            seq,
            received_at,
            version,
            phone_number_id,
            headers,
            body,
        };
        inner.handle(request).await
    });
    let (status, body) = match task.await {
        Ok(answer) => answer,
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            meta_error(
                131000,
                "(#131000) Something went wrong",
                "Something went wrong",
            ),
        ),
    };
    (status, Json(body)).into_response()
}

async fn list_messages(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!({ "messages": sandbox.received() }))
}

/// The customer-service window Meta gives after a user writes.
const SERVICE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

async fn reset(State(sandbox): State<Sandbox>) -> Json<Value> {
    sandbox.reset();
    Json(json!({ "status": "ok" }))
}

/// Meta's error for a Graph request without an access token (190).
fn no_token_body() -> Value {
    meta_error(
        190,
        "Invalid OAuth access token - Cannot parse access token",
        "The request has no Authorization: Bearer access token",
    )
}

/// The sandbox's answer to a Graph request without an access token.
fn no_token() -> Response {
    (StatusCode::UNAUTHORIZED, Json(no_token_body())).into_response()
}

/// The app the sandbox's tokens belong to, as Meta names a subscribed app.
fn sandbox_app() -> Value {
    json!({"whatsapp_business_api_data": {
        "id": "1000000000000001",
        "name": "Kirim sandbox app",
        "link": "https://www.facebook.com/games/?app_id=1000000000000001",
    }})
}

/// `POST /{version}/{waba_id}/subscribed_apps`: the app is subscribed to the WABA's
/// webhooks (Meta's `{"success": true}`; asking again changes nothing). The sandbox sends
/// its webhooks whether or not a WABA is subscribed; this records that it was asked.
async fn subscribe_app(
    State(sandbox): State<Sandbox>,
    Path((_version, waba_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !has_bearer_token(&headers) {
        return no_token();
    }
    if waba_id.is_empty() || !waba_id.bytes().all(|b| b.is_ascii_digit()) {
        let body = invalid_parameter("Invalid parameter: WABA-ID must be a valid numeric string");
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let mut state = lock(&sandbox.inner.state);
    if state.subscribed.len() >= MAX_TRACKED_PHONE_NUMBERS {
        state.subscribed.clear();
    }
    state.subscribed.insert(waba_id);
    Json(json!({"success": true})).into_response()
}

/// `GET /{version}/{waba_id}/subscribed_apps`: the sandbox's app when it was subscribed.
async fn subscribed_apps(
    State(sandbox): State<Sandbox>,
    Path((_version, waba_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !has_bearer_token(&headers) {
        return no_token();
    }
    let data: Vec<Value> = if sandbox.subscribed(&waba_id) {
        vec![sandbox_app()]
    } else {
        Vec::new()
    };
    Json(json!({ "data": data })).into_response()
}

/// A page cursor: the offset of the next template, hex-encoded (opaque, as Meta's are).
fn template_cursor(offset: usize) -> String {
    hex::encode(format!("offset:{offset}"))
}

fn template_offset(cursor: &str) -> Option<usize> {
    let text = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    text.strip_prefix("offset:")?.parse().ok()
}

/// `GET /{version}/{waba_id}/message_templates?limit=&after=`: one page of the catalogue.
async fn list_templates(
    State(sandbox): State<Sandbox>,
    Path((_version, waba_id)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    headers: HeaderMap,
) -> Response {
    if !has_bearer_token(&headers) {
        return no_token();
    }
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(25)
        .clamp(1, TEMPLATE_PAGE_SIZE);
    let start = match params.get("after") {
        None => 0,
        Some(after) => match template_offset(after) {
            Some(o) => o,
            None => {
                let body = invalid_parameter("Parameter 'after' is not a valid cursor");
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
        },
    };
    if let Some(token) = bearer_token(&headers) {
        let mut state = lock(&sandbox.inner.state);
        if state.token_wabas.len() >= MAX_TRACKED_PHONE_NUMBERS {
            state.token_wabas.clear();
        }
        state.token_wabas.insert(token, waba_id.clone());
    }
    // Meta's `name` filter (here: that name exactly).
    let mut all = sandbox.templates(&waba_id);
    if let Some(only) = params.get("name") {
        all.retain(|t| &t.name == only);
    }
    let end = start.saturating_add(limit).min(all.len());
    let data: Vec<Value> = all
        .get(start.min(all.len())..end)
        .unwrap_or_default()
        .iter()
        .map(SandboxTemplate::to_meta)
        .collect();
    let mut paging =
        json!({"cursors": {"before": template_cursor(start), "after": template_cursor(end)}});
    if end < all.len() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("graph.facebook.com");
        // The path as it was asked (local mode serves the graph under `/_sandbox/graph`),
        // with the request's `name` filter kept, as Meta's `next` keeps its query.
        let name = params
            .get("name")
            .map(|n| {
                let encoded: String = n
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                            char::from(b).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("&name={encoded}")
            })
            .unwrap_or_default();
        paging["next"] = Value::from(format!(
            "http://{host}{}?limit={limit}&after={}{name}",
            uri.path(),
            template_cursor(end)
        ));
    }
    tracing::info!(
        waba_id,
        start,
        count = data.len(),
        "sandbox listed templates"
    );
    Json(json!({"data": data, "paging": paging})).into_response()
}

/// What `PUT /_sandbox/templates/{waba_id}/{name}/{language}` may change, in Kirim's
/// words (`paused`, `marketing`, `yellow`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateChangeIn {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    quality: Option<String>,
    /// An edit of its body: the number of `{{n}}` parameters it takes (no webhook says
    /// so, as at Meta: a client reads the template again).
    #[serde(default)]
    body_parameters: Option<u32>,
}

/// Body parameters a sandbox template takes at most (Meta allows far more; enough here).
const MAX_BODY_PARAMETERS: u32 = 20;

fn one_of(value: &Option<String>, allowed: &[&str]) -> Result<Option<String>, String> {
    match value {
        None => Ok(None),
        Some(v) if allowed.contains(&v.to_ascii_lowercase().as_str()) => {
            Ok(Some(v.to_ascii_uppercase()))
        }
        Some(v) => Err(format!("`{v}` is not one of {}", allowed.join(", "))),
    }
}

async fn put_template(
    State(sandbox): State<Sandbox>,
    Path((waba_id, name, language)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, Json(invalid_parameter(&m))).into_response();
    let Ok(change) = serde_json::from_slice::<TemplateChangeIn>(&body) else {
        return bad(
            "give a JSON object with status, category, quality and/or body_parameters".into(),
        );
    };
    if change
        .body_parameters
        .is_some_and(|n| n > MAX_BODY_PARAMETERS)
    {
        return bad(format!("body_parameters is at most {MAX_BODY_PARAMETERS}"));
    }
    let checked = (
        one_of(
            &change.status,
            &[
                "approved", "pending", "rejected", "paused", "disabled", "archived",
            ],
        ),
        one_of(
            &change.category,
            &["marketing", "utility", "authentication"],
        ),
        one_of(&change.quality, &["green", "yellow", "red", "unknown"]),
    );
    let (status, category, quality) = match checked {
        (Ok(s), Ok(c), Ok(q)) => (s, c, q),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
    };
    // (field, webhook value) for each change, from the template before and after.
    let (template, hooks) = {
        let mut state = lock(&sandbox.inner.state);
        let catalogue = state
            .catalogues
            .entry(waba_id.clone())
            .or_insert_with(default_catalogue);
        // A template it does not have is created when the change names its category (as
        // a business creates one at Meta: `PENDING` until a status is given; no category
        // webhook, as at Meta).
        let created = !catalogue
            .iter()
            .any(|t| t.name == name && t.language == language);
        if created {
            let valid = kirim::domain::template::valid_name(&name)
                && kirim::domain::template::valid_language(&language);
            match &category {
                Some(c) if valid => {
                    let id = 100 + catalogue.len() as u32;
                    let mut t = SandboxTemplate::new(id, &name, c, "PENDING", 0);
                    t.language = language.clone();
                    catalogue.push(t);
                }
                _ => {
                    let body = meta_error(
                        132001,
                        "(#132001) Template name does not exist in the translation",
                        &format!("template name ({name}) does not exist in {language}"),
                    );
                    return (StatusCode::NOT_FOUND, Json(body)).into_response();
                }
            }
        }
        let Some(t) = catalogue
            .iter_mut()
            .find(|t| t.name == name && t.language == language)
        else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "template vanished").into_response();
        };
        if let Some(n) = change.body_parameters {
            t.body_parameters = n;
        }
        let before = t.clone();
        let base = json!({
            "message_template_id": t.id.parse::<u64>().unwrap_or_default(),
            "message_template_name": t.name,
            "message_template_language": t.language,
        });
        let with = |extra: Value| {
            let mut v = base.clone();
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            v
        };
        let mut hooks = Vec::new();
        if let Some(s) = status {
            t.status = s.clone();
            hooks.push((
                "message_template_status_update",
                with(json!({"event": s, "reason": "NONE"})),
            ));
        }
        if let Some(c) = category.filter(|_| !created) {
            t.category = c.clone();
            hooks.push((
                "template_category_update",
                with(json!({"previous_category": before.category, "new_category": c})),
            ));
        }
        if let Some(q) = quality {
            t.quality = q.clone();
            hooks.push((
                "message_template_quality_update",
                with(json!({"previous_quality_score": before.quality, "new_quality_score": q})),
            ));
        }
        (t.clone(), hooks)
    };
    let mut delivered = Vec::new();
    for (field, value) in hooks {
        let payload = json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": waba_id,
                "time": Utc::now().timestamp(),
                "changes": [{"field": field, "value": value}],
            }],
        });
        let ok = match sandbox.inner.webhook_url() {
            Some(url) => sandbox.inner.deliver(&url, &payload).await,
            None => false,
        };
        tracing::info!(waba_id, field, delivered = ok, "sandbox template webhook");
        delivered.push(json!({"field": field, "delivered": ok}));
    }
    Json(json!({"template": template.to_meta(), "webhooks": delivered})).into_response()
}

/// What `PUT /_sandbox/phone-numbers/{phone_number_id}` may change, in Meta's words.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NumberChangeIn {
    #[serde(default)]
    quality_rating: Option<String>,
    #[serde(default)]
    throughput: Option<String>,
    #[serde(default)]
    messaging_limit_tier: Option<String>,
    #[serde(default)]
    name_status: Option<String>,
    #[serde(default)]
    verified_name: Option<String>,
    #[serde(default)]
    display_phone_number: Option<String>,
    /// Meta's error code for every read of the number; `null` ends it.
    #[serde(default, deserialize_with = "some_or_null")]
    error: Option<Option<u32>>,
    /// Meta's error code for every send from the number; `null` ends it.
    #[serde(default, deserialize_with = "some_or_null")]
    send_error: Option<Option<u32>>,
    /// The WABA the number belongs to (digits): its webhooks' `entry[].id`.
    #[serde(default)]
    waba_id: Option<String>,
}

/// A field given as `null` (`Some(None)`), apart from one not given (`None`).
fn some_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// Numbers the sandbox keeps changes of at most; beyond it, all are forgotten (as its
/// other tracked state is).
const MAX_TRACKED_NUMBERS: usize = 1024;

/// `PUT /_sandbox/phone-numbers/{phone_number_id}`: changes what Meta says of the number
/// (no webhook is sent) and answers the number as `GET` would with every field.
async fn put_phone_number(
    State(sandbox): State<Sandbox>,
    Path(phone_number_id): Path<String>,
    body: Bytes,
) -> Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, Json(invalid_parameter(&m))).into_response();
    if phone_number_id.is_empty()
        || phone_number_id.len() > 32
        || !phone_number_id.bytes().all(|b| b.is_ascii_digit())
    {
        return bad("the phone number id must be numeric".into());
    }
    let Ok(change) = serde_json::from_slice::<NumberChangeIn>(&body) else {
        return bad(
            "give a JSON object with quality_rating, throughput, messaging_limit_tier, \
             name_status, verified_name, display_phone_number, error, send_error and/or \
             waba_id"
                .into(),
        );
    };
    let checked = (
        one_of(&change.quality_rating, &["green", "yellow", "red", "na"]),
        one_of(&change.throughput, &["standard", "high", "not_applicable"]),
        one_of(
            &change.messaging_limit_tier,
            &[
                "tier_50",
                "tier_250",
                "tier_1k",
                "tier_10k",
                "tier_100k",
                "tier_unlimited",
            ],
        ),
        one_of(
            &change.name_status,
            &[
                "approved",
                "available_without_review",
                "declined",
                "expired",
                "pending_review",
                "none",
            ],
        ),
    );
    let (quality, throughput, tier, name_status) = match checked {
        (Ok(q), Ok(t), Ok(l), Ok(n)) => (q, t, l, n),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return bad(e),
    };
    if let Some(w) = &change.waba_id {
        if w.is_empty() || w.len() > 32 || !w.bytes().all(|b| b.is_ascii_digit()) {
            return bad("waba_id is the WABA's numeric id".into());
        }
    }
    if let Some(d) = &change.display_phone_number {
        if d.is_empty()
            || d.len() > 32
            || !d
                .bytes()
                .all(|b| b.is_ascii_digit() || b" +-()".contains(&b))
        {
            return bad("display_phone_number is digits, spaces and + - ( ) only".into());
        }
    }
    let number = {
        let mut state = lock(&sandbox.inner.state);
        if state.numbers.len() >= MAX_TRACKED_NUMBERS
            && !state.numbers.contains_key(&phone_number_id)
        {
            state.numbers.clear();
        }
        let n = state
            .numbers
            .entry(phone_number_id.clone())
            .or_insert_with(|| SandboxNumber::of(&phone_number_id));
        if let Some(q) = quality {
            n.quality_rating = q;
        }
        if let Some(t) = throughput {
            n.throughput = t;
        }
        if let Some(l) = tier {
            n.messaging_limit_tier = l;
        }
        if let Some(s) = name_status {
            n.name_status = s;
        }
        if let Some(v) = change.verified_name {
            n.verified_name = v.chars().take(75).collect();
        }
        if let Some(d) = change.display_phone_number {
            n.display_phone_number = d;
        }
        if let Some(e) = change.error {
            n.error = e;
        }
        if let Some(e) = change.send_error {
            n.send_error = e;
        }
        if let Some(w) = change.waba_id {
            n.waba_id = Some(w);
        }
        n.clone()
    };
    Json(number.to_meta(&phone_number_id, &NUMBER_FIELDS)).into_response()
}

/// `GET /{version}/{phone_number_id}?fields=`: the number as Meta describes it (its
/// default fields, and those asked for); a field Meta does not have is refused (100).
async fn get_phone_number(
    State(sandbox): State<Sandbox>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !has_bearer_token(&headers) {
        return no_token();
    }
    if phone_number_id.is_empty() || !phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
        let body = invalid_parameter("Invalid phone number ID format. Must be numeric.");
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let fields: Vec<&str> = params
        .get("fields")
        .map(|f| {
            f.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(unknown) = fields.iter().find(|f| !NUMBER_FIELDS.contains(f)) {
        let body = meta_error(
            100,
            "(#100) Tried accessing nonexisting field",
            &format!("Tried accessing nonexisting field ({unknown}) on node type (WhatsAppBusinessPhoneNumber)"),
        );
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let number = sandbox.phone_number(&phone_number_id);
    if let Some(code) = number.error {
        let status = match code {
            4 | 80007 | 130429 => StatusCode::TOO_MANY_REQUESTS,
            190 => StatusCode::UNAUTHORIZED,
            131000 => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = meta_error(
            code,
            &format!("(#{code}) Error"),
            "the sandbox was told to refuse this number's reads",
        );
        return (status, Json(body)).into_response();
    }
    tracing::info!(phone_number_id, "sandbox described a number");
    Json(number.to_meta(&phone_number_id, &fields)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboundIn {
    phone_number_id: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    button: Option<String>,
}

/// A wamid shaped as Meta's: `wamid.` and base64 of `1c 18`, the user's digits with
/// their length, `15 02 00 11 18 12`, 18 hexadecimal characters of the message's own id,
/// and `00`. The number is in it (as in Meta's), so whatever logs a whole wamid is
/// seen to undo the masking of phone numbers.
pub fn meta_wamid(digits: &str) -> String {
    use base64::Engine;
    let digits = &digits.as_bytes()[..digits.len().min(0x7f)];
    let mut raw = vec![0x1c, 0x18, digits.len() as u8];
    raw.extend_from_slice(digits);
    raw.extend_from_slice(&[0x15, 0x02, 0x00, 0x11, 0x18, 0x12]);
    let id = format!("{:018X}", rand::rng().random::<u128>() >> 56);
    raw.extend_from_slice(id.as_bytes());
    raw.push(0);
    format!(
        "wamid.{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// `POST /_sandbox/inbound`: one user's message to a business number, as Meta's signed
/// webhook (see the module docs). Answers `{"delivered":bool,"webhook":<the body sent>}`.
async fn post_inbound(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, Json(invalid_parameter(m))).into_response();
    let Ok(m) = serde_json::from_slice::<InboundIn>(&body) else {
        return bad(
            "give {\"phone_number_id\", \"from\"?, \"user_id\"?, \"text\"? or \"button\"?}",
        );
    };
    let from = m.from.map(|f| f.trim_start_matches('+').to_owned());
    if from.is_none() && m.user_id.is_none() {
        return bad("give from (the user's phone) and/or user_id");
    }
    if m.phone_number_id.is_empty()
        || from
            .as_ref()
            .is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("phone_number_id is required; from is the user's phone, digits");
    }
    if let Some(f) = &from {
        // Remembered for the pricing of session messages (free within 24 hours).
        let mut state = lock(&sandbox.inner.state);
        if state.inbound.len() >= OUTBOX_CAPACITY {
            state.inbound.retain(|_, at| at.elapsed() < SERVICE_WINDOW);
        }
        state
            .inbound
            .insert((m.phone_number_id.clone(), f.clone()), Instant::now());
    }
    let now = Utc::now().timestamp();
    let wamid = meta_wamid(from.as_deref().unwrap_or_default());
    let mut message = json!({
        "id": wamid,
        "timestamp": now.to_string(),
    });
    let mut contact = json!({"profile": {"name": "Sandbox user"}});
    if let Some(f) = &from {
        message["from"] = json!(f);
        contact["wa_id"] = json!(f);
    }
    if let Some(u) = &m.user_id {
        message["from_user_id"] = json!(u);
        contact["user_id"] = json!(u);
    }
    match (m.text, m.button) {
        (_, Some(b)) => {
            message["type"] = json!("button");
            message["button"] = json!({"payload": b, "text": b});
        }
        (t, None) => {
            message["type"] = json!("text");
            message["text"] = json!({"body": t.unwrap_or_else(|| "Hello".into())});
        }
    }
    let payload = json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": sandbox.waba_of(&m.phone_number_id),
            "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {
                    "display_phone_number": display_phone_number(&m.phone_number_id),
                    "phone_number_id": m.phone_number_id,
                },
                "contacts": [contact],
                "messages": [message],
            }}],
        }],
    });
    let delivered = match sandbox.inner.webhook_url() {
        Some(url) => sandbox.inner.deliver(&url, &payload).await,
        None => false,
    };
    tracing::info!(delivered, "sandbox inbound webhook");
    Json(json!({"id": wamid, "delivered": delivered, "webhook": payload})).into_response()
}

/// Reads a send as Meta does before the schema sees it: component `type` values in any
/// case, location coordinates as numbers or strings.
fn normalise(request: &mut Value) {
    if let Some(components) = request
        .pointer_mut("/template/components")
        .and_then(Value::as_array_mut)
    {
        for c in components.iter_mut() {
            if let Some(t) = c.get_mut("type") {
                if let Some(lower) = t.as_str().map(str::to_ascii_lowercase) {
                    *t = Value::from(lower);
                }
            }
            if let Some(parameters) = c.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in parameters.iter_mut() {
                    if let Some(location) = p.get_mut("location") {
                        coordinates_as_strings(location);
                    }
                }
            }
        }
    }
    if let Some(location) = request.get_mut("location") {
        coordinates_as_strings(location);
    }
}

fn coordinates_as_strings(location: &mut Value) {
    for key in ["latitude", "longitude"] {
        if let Some(v) = location.get_mut(key) {
            if let Value::Number(n) = v {
                *v = Value::from(n.to_string());
            }
        }
    }
}

/// Meta's refusal of a template send the catalogue does not allow, if any.
fn template_refusal(catalogue: &[SandboxTemplate], request: &Value) -> Option<(StatusCode, Value)> {
    let template = request.get("template")?;
    let name = template
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let language = template
        .pointer("/language/code")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // Only an approved template is sent. Paused and disabled ones have Meta's own codes
    // (132015, 132016); any other status (pending, rejected, archived, or one Meta adds)
    // answers as a template Meta does not have, 132001 (HTTP 404): Meta documents no code
    // of its own for an archived template, and 132001 is what it answers for a template
    // that is not approved. Kirim treats them alike: not sendable.
    let Some(t) = catalogue
        .iter()
        .find(|t| t.name == name && t.language == language)
        .filter(|t| matches!(t.status.as_str(), "APPROVED" | "PAUSED" | "DISABLED"))
    else {
        return Some((StatusCode::NOT_FOUND, template_missing_error(request)));
    };
    match t.status.as_str() {
        "PAUSED" => {
            return Some((
                StatusCode::BAD_REQUEST,
                meta_error(
                    132015,
                    "(#132015) Template is Paused",
                    &format!("template ({name}) is paused because of low quality"),
                ),
            ))
        }
        "DISABLED" => {
            return Some((
                StatusCode::BAD_REQUEST,
                meta_error(
                    132016,
                    "(#132016) Template is Disabled",
                    &format!("template ({name}) is disabled"),
                ),
            ))
        }
        _ => {}
    }
    let given: usize = template
        .get("components")
        .and_then(Value::as_array)
        .map(|components| {
            components
                .iter()
                .filter(|c| c.get("type").and_then(Value::as_str) == Some("body"))
                .map(|c| {
                    c.get("parameters")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                })
                .sum()
        })
        .unwrap_or(0);
    if given != t.body_parameters as usize {
        return Some((
            StatusCode::BAD_REQUEST,
            meta_error(
                132000,
                "(#132000) Number of parameters does not match the expected number of params",
                &format!(
                    "body: number of localizable_params ({given}) does not match the expected \
                     number of params ({})",
                    t.body_parameters
                ),
            ),
        ));
    }
    None
}

struct Incoming {
    seq: u64,
    received_at: DateTime<Utc>,
    version: String,
    phone_number_id: String,
    headers: HeaderMap,
    body: Bytes,
}

/// What a recipient's last four digits make the sandbox do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    FailUndeliverable,
    FailMarketingStopped,
    ThrottleTwice,
    AlwaysTransientError,
    Slow,
    TokenExpired,
    TemplateMissing,
    OutOfOrder,
    Normal,
}

impl Behaviour {
    fn of(recipient_digits: &str) -> Behaviour {
        let start = recipient_digits.len().saturating_sub(4);
        match recipient_digits.get(start..).unwrap_or_default() {
            "0001" => Behaviour::FailUndeliverable,
            "0002" => Behaviour::FailMarketingStopped,
            "0003" => Behaviour::ThrottleTwice,
            "0004" => Behaviour::AlwaysTransientError,
            "0005" => Behaviour::Slow,
            "0006" => Behaviour::TokenExpired,
            "0007" => Behaviour::TemplateMissing,
            "0008" => Behaviour::OutOfOrder,
            _ => Behaviour::Normal,
        }
    }

    /// The status webhooks an accepted message produces, in sending order.
    fn statuses(self) -> Vec<StatusEvent> {
        use StatusEvent::{Delivered, Failed, Read, Sent};
        match self {
            Behaviour::FailUndeliverable => vec![Failed(StatusFailure {
                code: 131026,
                title: "Message undeliverable",
                details: "Message Undeliverable.",
            })],
            Behaviour::FailMarketingStopped => vec![Failed(StatusFailure {
                code: 131050,
                title: "Unable to deliver the message. This recipient has chosen to stop \
                        receiving marketing messages on WhatsApp from your business.",
                details: "The user has stopped receiving marketing messages from this business.",
            })],
            Behaviour::OutOfOrder => vec![Read, Read, Delivered, Delivered, Sent, Sent],
            _ => vec![Sent, Delivered, Read],
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum StatusEvent {
    Sent,
    Delivered,
    Read,
    Failed(StatusFailure),
}

#[derive(Clone, Copy, Debug)]
struct StatusFailure {
    code: u32,
    title: &'static str,
    details: &'static str,
}

impl StatusEvent {
    fn name(self) -> &'static str {
        match self {
            StatusEvent::Sent => "sent",
            StatusEvent::Delivered => "delivered",
            StatusEvent::Read => "read",
            StatusEvent::Failed(_) => "failed",
        }
    }
}

/// The statuses still to send for one accepted message.
struct StatusPlan {
    epoch: u64,
    /// The WABA of the number sent from, when it was sent: the statuses' `entry[].id`.
    waba_id: String,
    wamid: String,
    phone_number_id: String,
    recipient_id: String,
    biz_opaque_callback_data: Option<String>,
    events: Vec<StatusEvent>,
    /// Meta's `pricing` of the message, put on its sent, delivered and read statuses.
    pricing: Value,
}

impl Inner {
    fn webhook_url(&self) -> Option<String> {
        lock(&self.webhook_url).clone()
    }

    /// [`Sandbox::waba_of`].
    fn waba_of(&self, phone_number_id: &str) -> String {
        let state = lock(&self.state);
        state
            .numbers
            .get(phone_number_id)
            .and_then(|n| n.waba_id.clone())
            .or_else(|| state.number_wabas.get(phone_number_id).cloned())
            .unwrap_or_else(|| self.waba_id.clone())
    }

    async fn handle(self: Arc<Self>, incoming: Incoming) -> (StatusCode, Value) {
        let epoch = lock(&self.state).epoch;
        let request: Result<Value, _> = serde_json::from_slice(&incoming.body);
        let (status, body, plan) = self.answer(epoch, &incoming, request.as_ref().ok()).await;
        let recorded = ReceivedRequest {
            received_at: incoming.received_at,
            phone_number_id: incoming.phone_number_id,
            version: incoming.version,
            request: request
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&incoming.body).into())),
            response: RecordedResponse {
                status: status.as_u16(),
                body: body.clone(),
            },
            token_sha256: bearer_token(&incoming.headers),
        };
        if self.record(epoch, incoming.seq, recorded) {
            if let Some(plan) = plan {
                tokio::spawn(self.clone().send_statuses(plan));
            }
        }
        (status, body)
    }

    /// Decides the answer (and, when accepted, the statuses to send).
    async fn answer(
        &self,
        epoch: u64,
        incoming: &Incoming,
        request: Option<&Value>,
    ) -> (StatusCode, Value, Option<StatusPlan>) {
        let phone_number_id = incoming.phone_number_id.as_str();
        if !has_bearer_token(&incoming.headers) {
            tracing::info!(
                phone_number_id,
                outcome = "missing_token",
                "sandbox answered"
            );
            return (StatusCode::UNAUTHORIZED, no_token_body(), None);
        }
        if self.over_rate_limit(phone_number_id) {
            tracing::info!(
                phone_number_id,
                outcome = "rate_limited",
                "sandbox answered"
            );
            return (StatusCode::TOO_MANY_REQUESTS, rate_limit_error(), None);
        }
        let refused = lock(&self.state)
            .numbers
            .get(phone_number_id)
            .and_then(|n| n.send_error);
        if let Some(code) = refused {
            tracing::info!(
                phone_number_id,
                code,
                outcome = "number_refused",
                "sandbox answered"
            );
            return (StatusCode::BAD_REQUEST, number_send_error(code), None);
        }
        let Some(request) = request else {
            tracing::info!(phone_number_id, outcome = "not_json", "sandbox answered");
            let body = invalid_parameter("The request body is not valid JSON");
            return (StatusCode::BAD_REQUEST, body, None);
        };
        let mut normalised = request.clone();
        normalise(&mut normalised);
        let request = &normalised;
        if let Err(errors) = self.schema.validate_message(request) {
            tracing::info!(phone_number_id, outcome = "invalid", "sandbox answered");
            return (
                StatusCode::BAD_REQUEST,
                invalid_parameter(&errors.join("; ")),
                None,
            );
        }
        let to = request
            .get("to")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let digits: String = to.chars().filter(char::is_ascii_digit).collect();
        let recipient = mask(&digits);
        if digits.is_empty() {
            tracing::info!(
                phone_number_id,
                outcome = "invalid_recipient",
                "sandbox answered"
            );
            let body = invalid_parameter("Parameter 'to' is not a valid WhatsApp phone number");
            return (StatusCode::BAD_REQUEST, body, None);
        }

        let behaviour = Behaviour::of(&digits);
        let catalogue = {
            let mut state = lock(&self.state);
            let known =
                bearer_token(&incoming.headers).and_then(|t| state.token_wabas.get(&t).cloned());
            // The number sends with a token of that WABA: its webhooks name it, unless
            // the sandbox was told the number's WABA.
            if let Some(w) = &known {
                if state.number_wabas.len() >= MAX_TRACKED_NUMBERS
                    && !state.number_wabas.contains_key(phone_number_id)
                {
                    state.number_wabas.clear();
                }
                state
                    .number_wabas
                    .insert(phone_number_id.to_owned(), w.clone());
            }
            let waba = known.unwrap_or_else(|| self.waba_id.clone());
            state
                .catalogues
                .get(&waba)
                .cloned()
                .unwrap_or_else(default_catalogue)
        };
        let refusal = template_refusal(&catalogue, request);
        let rejection = refusal.or_else(|| match behaviour {
            Behaviour::ThrottleTwice
                if self.throttle_again(
                    phone_number_id,
                    &digits,
                    request
                        .get("biz_opaque_callback_data")
                        .and_then(Value::as_str),
                ) =>
            {
                Some((StatusCode::TOO_MANY_REQUESTS, rate_limit_error()))
            }
            Behaviour::AlwaysTransientError => Some((
                StatusCode::INTERNAL_SERVER_ERROR,
                meta_error(
                    131000,
                    "(#131000) Something went wrong",
                    "Something went wrong",
                ),
            )),
            Behaviour::TokenExpired => Some((StatusCode::UNAUTHORIZED, token_expired_error())),
            Behaviour::TemplateMissing => {
                Some((StatusCode::NOT_FOUND, template_missing_error(request)))
            }
            _ => None,
        });
        if let Some((status, body)) = rejection {
            let code = body.pointer("/error/code").and_then(Value::as_u64);
            tracing::info!(
                phone_number_id,
                recipient,
                outcome = "error",
                code,
                "sandbox answered"
            );
            return (status, body, None);
        }
        if behaviour == Behaviour::Slow {
            tokio::time::sleep(self.slow_delay).await;
        }

        let wamid = meta_wamid(&digits);
        tracing::info!(
            phone_number_id,
            recipient,
            outcome = "accepted",
            "sandbox answered"
        );
        let body = json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": to, "wa_id": digits }],
            "messages": [{ "id": wamid, "message_status": "accepted" }],
        });
        let pricing = self.pricing_of(request, &catalogue, phone_number_id, &digits);
        let plan = StatusPlan {
            epoch,
            waba_id: self.waba_of(phone_number_id),
            pricing,
            wamid,
            phone_number_id: phone_number_id.to_string(),
            recipient_id: digits,
            biz_opaque_callback_data: request
                .get("biz_opaque_callback_data")
                .and_then(Value::as_str)
                .map(str::to_string),
            events: behaviour.statuses(),
        };
        (StatusCode::OK, body, Some(plan))
    }

    /// Meta's `pricing` of an accepted message: a template is priced in its catalogue
    /// category, `regular`; a session message is `service`, `free_customer_service` within
    /// 24 hours of an inbound message from that user to that number, else `regular`.
    fn pricing_of(
        &self,
        request: &Value,
        catalogue: &[SandboxTemplate],
        phone_number_id: &str,
        digits: &str,
    ) -> Value {
        let (category, kind) = match request.get("template") {
            Some(t) => {
                let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
                let language = t
                    .pointer("/language/code")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let category = catalogue
                    .iter()
                    .find(|c| c.name == name && c.language == language)
                    .map_or_else(|| "utility".to_owned(), |c| c.category.to_ascii_lowercase());
                (category, "regular")
            }
            None => {
                let state = lock(&self.state);
                let recent = state
                    .inbound
                    .get(&(phone_number_id.to_owned(), digits.to_owned()))
                    .is_some_and(|at| at.elapsed() < SERVICE_WINDOW);
                let kind = if recent {
                    "free_customer_service"
                } else {
                    "regular"
                };
                ("service".to_owned(), kind)
            }
        };
        json!({
            "billable": kind == "regular",
            "pricing_model": "PMP",
            "category": category,
            "type": kind,
        })
    }

    /// Counts an attempt for `phone_number_id` when it is let through; true when it is over
    /// the limit (the last second already let `limit` through).
    fn over_rate_limit(&self, phone_number_id: &str) -> bool {
        let Ok(limit) = usize::try_from(self.rate_limit_per_sec) else {
            return false;
        };
        if limit == 0 {
            return false;
        }
        let now = Instant::now();
        let mut state = lock(&self.state);
        if state.windows.len() >= MAX_TRACKED_PHONE_NUMBERS
            && !state.windows.contains_key(phone_number_id)
        {
            state.windows.retain(|_, window| {
                window
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < RATE_WINDOW)
            });
        }
        let window = state
            .windows
            .entry(phone_number_id.to_string())
            .or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            window.pop_front();
        }
        // Only messages let through count toward the rolling second, as at Meta: a sender
        // refused above the limit still gets `limit` a second through, not none.
        if window.len() >= limit {
            return true;
        }
        window.push_back(now);
        false
    }

    /// Counts an attempt to a 0003 recipient; true while it should still be refused. The
    /// attempt let through is accepted (nothing after this refuses a 0003 send), so the
    /// count starts again there: every message gets its two 130429, not only the first.
    fn throttle_again(&self, phone_number_id: &str, digits: &str, message: Option<&str>) -> bool {
        let mut state = lock(&self.state);
        // Bounded: a message given up after one refusal leaves its count behind.
        if state.throttled.len() >= THROTTLED_KEPT {
            state.throttled.clear();
        }
        let key = (
            phone_number_id.to_string(),
            digits.to_string(),
            message.map(str::to_owned),
        );
        let attempts = state.throttled.entry(key.clone()).or_insert(0);
        *attempts = attempts.saturating_add(1);
        if *attempts <= THROTTLED_ATTEMPTS {
            return true;
        }
        state.throttled.remove(&key);
        false
    }

    /// Adds a request to the outbox in arrival order; false if a reset happened meanwhile.
    fn record(&self, epoch: u64, seq: u64, request: ReceivedRequest) -> bool {
        let mut state = lock(&self.state);
        if state.epoch != epoch {
            return false;
        }
        let at = state.outbox.partition_point(|(s, _)| *s < seq);
        state.outbox.insert(at, (seq, request));
        while state.outbox.len() > OUTBOX_CAPACITY {
            state.outbox.pop_front();
        }
        true
    }

    async fn send_statuses(self: Arc<Self>, plan: StatusPlan) {
        let display_phone_number = display_phone_number(&plan.phone_number_id);
        for event in &plan.events {
            tokio::time::sleep(self.status_delay).await;
            if lock(&self.state).epoch != plan.epoch {
                return;
            }
            let Some(url) = self.webhook_url() else {
                continue;
            };
            let mut status = json!({
                "id": plan.wamid,
                "status": event.name(),
                "timestamp": Utc::now().timestamp().to_string(),
                "recipient_id": plan.recipient_id,
            });
            if let Some(data) = &plan.biz_opaque_callback_data {
                status["biz_opaque_callback_data"] = Value::from(data.as_str());
            }
            if !matches!(event, StatusEvent::Failed(_)) {
                status["pricing"] = plan.pricing.clone();
            }
            if let StatusEvent::Failed(failure) = event {
                status["errors"] = json!([{
                    "code": failure.code,
                    "title": failure.title,
                    "message": failure.title,
                    "error_data": { "details": failure.details },
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                }]);
            }
            let payload = json!({
                "object": "whatsapp_business_account",
                "entry": [{
                    "id": plan.waba_id,
                    "changes": [{
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": plan.phone_number_id,
                            },
                            "statuses": [status],
                        },
                    }],
                }],
            });
            let delivered = self.deliver(&url, &payload).await;
            tracing::info!(
                phone_number_id = plan.phone_number_id,
                recipient = mask(&plan.recipient_id),
                status = event.name(),
                delivered,
                "sandbox status webhook"
            );
        }
    }

    /// POSTs a signed webhook, retrying with backoff; true once the receiver answered 2xx.
    async fn deliver(&self, url: &str, payload: &Value) -> bool {
        let Ok(body) = serde_json::to_vec(payload) else {
            return false;
        };
        let Some(signature) = sign(&self.app_secret, &body) else {
            return false;
        };
        let mut backoff = WEBHOOK_BACKOFF;
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            let result = self
                .http
                .post(url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("X-Hub-Signature-256", &signature)
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => return true,
                Ok(response) => tracing::warn!(
                    attempt,
                    http_status = response.status().as_u16(),
                    "sandbox webhook refused"
                ),
                Err(e) => {
                    tracing::warn!(attempt, error = %e.without_url(), "sandbox webhook failed")
                }
            }
            if attempt < WEBHOOK_ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        false
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, Meta's `X-Hub-Signature-256`.
fn sign(secret: &str, body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(body);
    Some(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// A hash of the request's bearer token (never the token itself), if it has one.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    use sha2::Digest;
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())?
        .1
        .trim()
        .to_owned();
    Some(hex::encode(Sha256::digest(token.as_bytes())))
}

fn has_bearer_token(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()
        })
}

/// A recipient for logs: every digit but the last four hidden.
fn mask(digits: &str) -> String {
    let count = digits.chars().count();
    digits
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < count { '*' } else { c })
        .collect()
}

/// The sandbox knows no display numbers: it makes a stable US test number (1555…) from the
/// phone number id's last seven digits.
fn display_phone_number(phone_number_id: &str) -> String {
    let digits: Vec<char> = phone_number_id
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let tail: String = digits[digits.len().saturating_sub(7)..].iter().collect();
    format!("1555{tail:0>7}")
}

/// Meta's Graph API error body.
fn meta_error(code: u32, message: &str, details: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": { "messaging_product": "whatsapp", "details": details },
            "fbtrace_id": fbtrace_id(),
        }
    })
}

/// Meta's answer to a send from a number the sandbox was told to refuse
/// (`PUT /_sandbox/phone-numbers/{id}` `{"send_error":131048}`).
fn number_send_error(code: u32) -> Value {
    match code {
        131048 => meta_error(
            131048,
            "(#131048) Spam rate limit hit",
            "Message failed to send because there are restrictions on how many messages can be \
             sent from this phone number. This may be because too many previous messages were \
             blocked or flagged as spam.",
        ),
        c => meta_error(
            c,
            &format!("(#{c}) Error"),
            "the sandbox was told to refuse this number's sends",
        ),
    }
}

fn invalid_parameter(details: &str) -> Value {
    meta_error(100, "(#100) Invalid parameter", details)
}

fn rate_limit_error() -> Value {
    meta_error(
        130429,
        "(#130429) Rate limit hit",
        "Cloud API message throughput has been reached.",
    )
}

fn token_expired_error() -> Value {
    let mut body = meta_error(
        190,
        "Error validating access token: Session has expired.",
        "The access token has expired; get a new one.",
    );
    body["error"]["error_subcode"] = Value::from(463);
    body
}

fn template_missing_error(request: &Value) -> Value {
    let name = request
        .pointer("/template/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let language = request
        .pointer("/template/language/code")
        .and_then(Value::as_str)
        .unwrap_or_default();
    meta_error(
        132001,
        "(#132001) Template name does not exist in the translation",
        &format!("template name ({name}) does not exist in {language}"),
    )
}

/// A trace id shaped like Meta's (23 letters and digits).
fn fbtrace_id() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(23)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const SECRET: &str = "test-app-secret";
    const WABA: &str = "420000000000001";
    const PHONE_NUMBER_ID: &str = "106540352242922";

    /// Collects webhooks whose signature verifies; counts the others.
    #[derive(Default)]
    struct Receiver {
        bodies: Mutex<Vec<Value>>,
        bad_signatures: AtomicUsize,
        /// Answer 503 to this many deliveries first.
        refuse_next: AtomicUsize,
    }

    async fn receive(
        State(receiver): State<Arc<Receiver>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let refuse = receiver
            .refuse_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let signature = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("sha256="))
            .and_then(|v| hex::decode(v).ok())
            .unwrap_or_default();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
        mac.update(&body);
        let json_content = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            == Some("application/json");
        if mac.verify_slice(&signature).is_err() || !json_content {
            receiver.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return StatusCode::UNAUTHORIZED;
        }
        let body = serde_json::from_slice(&body).expect("webhook body is JSON");
        lock(&receiver.bodies).push(body);
        StatusCode::OK
    }

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    struct Harness {
        sandbox: Sandbox,
        base: String,
        receiver: Arc<Receiver>,
        http: reqwest::Client,
    }

    async fn harness() -> Harness {
        harness_with(|_| {}).await
    }

    async fn harness_with(tweak: impl FnOnce(&mut SandboxConfig)) -> Harness {
        let mut cfg = SandboxConfig {
            status_delay: Duration::from_millis(10),
            slow_delay: Duration::from_millis(300),
            ..SandboxConfig::new(SECRET, WABA)
        };
        tweak(&mut cfg);
        let sandbox = Sandbox::new(cfg);
        let base = serve(sandbox.graph_router().merge(sandbox.inspect_router())).await;
        let receiver = Arc::new(Receiver::default());
        let hooks = serve(
            Router::new()
                .route("/webhook", post(receive))
                .with_state(receiver.clone()),
        )
        .await;
        sandbox.set_webhook_url(format!("{hooks}/webhook"));
        Harness {
            sandbox,
            base,
            receiver,
            http: reqwest::Client::new(),
        }
    }

    fn template_to(to: &str) -> Value {
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "template",
            "template": {
                "name": "order_update",
                "language": {"code": "en_US"},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}
                ]
            }
        })
    }

    fn template_named(to: &str, name: &str, components: Value) -> Value {
        let mut m = template_to(to);
        m["template"]["name"] = json!(name);
        m["template"]["components"] = components;
        m
    }

    impl Harness {
        fn messages_url(&self) -> String {
            format!("{}/v23.0/{PHONE_NUMBER_ID}/messages", self.base)
        }

        async fn post(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
            let response = request.send().await.expect("sandbox answers");
            let status = response.status().as_u16();
            let body = response.json().await.expect("sandbox answers JSON");
            (status, body)
        }

        async fn send_json(&self, body: &Value) -> (u16, Value) {
            let request = self
                .http
                .post(self.messages_url())
                .bearer_auth("test-token")
                .json(body);
            self.post(request).await
        }

        async fn send_to(&self, to: &str) -> (u16, Value) {
            self.send_json(&template_to(to)).await
        }

        /// The statuses received so far, in arrival order.
        fn statuses(&self) -> Vec<Value> {
            lock(&self.receiver.bodies)
                .iter()
                .flat_map(|body| {
                    body.pointer("/entry/0/changes/0/value/statuses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .collect()
        }

        /// Waits for `count` statuses, then a little longer to catch any extra one.
        async fn wait_for_statuses(&self, count: usize) -> Vec<Value> {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.statuses().len() < count && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(self.receiver.bad_signatures.load(Ordering::SeqCst), 0);
            self.statuses()
        }

        async fn outbox(&self) -> Vec<Value> {
            let url = format!("{}/_sandbox/messages", self.base);
            let (status, body) = self.post(self.http.get(url)).await;
            assert_eq!(status, 200);
            body["messages"]
                .as_array()
                .cloned()
                .expect("messages array")
        }
    }

    fn wamid_of(body: &Value) -> String {
        body.pointer("/messages/0/id")
            .and_then(Value::as_str)
            .expect("accepted message id")
            .to_string()
    }

    fn status_names(statuses: &[Value]) -> Vec<&str> {
        statuses
            .iter()
            .map(|s| s["status"].as_str().unwrap_or_default())
            .collect()
    }

    fn assert_meta_error(body: &Value, code: u64) {
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["type"], "OAuthException", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(body["error"]["error_data"]["messaging_product"], "whatsapp");
        assert!(body["error"]["error_data"]["details"].is_string(), "{body}");
        assert!(body["error"]["fbtrace_id"].is_string(), "{body}");
    }

    #[tokio::test]
    async fn an_ordinary_number_is_accepted_then_sent_delivered_read_with_signed_webhooks() {
        let h = harness().await;
        let (status, body) = h.send_to("+1 555 123 4567").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messaging_product"], "whatsapp");
        assert_eq!(body["contacts"][0]["input"], "+1 555 123 4567");
        assert_eq!(body["contacts"][0]["wa_id"], "15551234567");
        assert_eq!(body["messages"][0]["message_status"], "accepted");
        let wamid = wamid_of(&body);
        assert!(wamid.starts_with("wamid."));

        let statuses = h.wait_for_statuses(3).await;
        assert_eq!(status_names(&statuses), ["sent", "delivered", "read"]);
        for status in &statuses {
            assert_eq!(status["id"], wamid.as_str());
            assert_eq!(status["recipient_id"], "15551234567");
            let timestamp = status["timestamp"].as_str().expect("timestamp string");
            assert!(timestamp.parse::<i64>().is_ok_and(|t| t > 1_700_000_000));
            assert!(status.get("errors").is_none());
            assert!(status.get("biz_opaque_callback_data").is_none());
        }
        let hook = lock(&h.receiver.bodies)[0].clone();
        assert_eq!(hook["object"], "whatsapp_business_account");
        assert_eq!(hook["entry"][0]["id"], WABA);
        let change = &hook["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        assert_eq!(change["value"]["messaging_product"], "whatsapp");
        assert_eq!(
            change["value"]["metadata"]["phone_number_id"],
            PHONE_NUMBER_ID
        );
        assert!(change["value"]["metadata"]["display_phone_number"].is_string());
    }

    #[tokio::test]
    async fn statuses_carry_metas_pricing_a_template_in_its_category_and_a_reply_free() {
        let h = harness().await;
        let (status, _) = h.send_to("15551234567").await;
        assert_eq!(status, 200);
        let statuses = h.wait_for_statuses(3).await;
        for s in &statuses {
            assert_eq!(
                s["pricing"],
                json!({"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"}),
                "{s}"
            );
        }
        let text = |to: &str| {
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                   "type": "text", "text": {"body": "hello"}})
        };
        // A session text to a user who never wrote: Meta's regular service price.
        assert_eq!(h.send_json(&text("15557654321")).await.0, 200);
        let statuses = h.wait_for_statuses(6).await;
        assert_eq!(statuses[5]["pricing"]["category"], "service");
        assert_eq!(statuses[5]["pricing"]["type"], "regular");
        // The user writes to the number; a reply within 24 hours is free.
        let url = format!("{}/_sandbox/inbound", h.base);
        let (status, body) = h
            .post(h.http.post(url).json(
                &json!({"phone_number_id": PHONE_NUMBER_ID, "from": "+15557654321", "text": "hi"}),
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["delivered"], true);
        let inbound = lock(&h.receiver.bodies).last().cloned().unwrap_or_default();
        assert_eq!(
            inbound.pointer("/entry/0/changes/0/value/messages/0/from"),
            Some(&json!("15557654321"))
        );
        assert_eq!(h.send_json(&text("15557654321")).await.0, 200);
        let statuses = h.wait_for_statuses(9).await;
        assert_eq!(statuses[8]["pricing"]["type"], "free_customer_service");
        assert_eq!(statuses[8]["pricing"]["billable"], false);
    }

    #[tokio::test]
    async fn biz_opaque_callback_data_is_echoed_in_every_status() {
        let h = harness().await;
        let mut message = template_to("15551234567");
        message["biz_opaque_callback_data"] = json!("tenant-7/msg-42");
        let (status, body) = h.send_json(&message).await;
        assert_eq!(status, 200, "{body}");
        let statuses = h.wait_for_statuses(3).await;
        assert_eq!(statuses.len(), 3);
        for status in &statuses {
            assert_eq!(status["biz_opaque_callback_data"], "tenant-7/msg-42");
        }
    }

    #[tokio::test]
    async fn a_number_ending_0001_is_accepted_then_fails_with_131026() {
        let h = harness().await;
        let (status, body) = h.send_to("15550000001").await;
        assert_eq!(status, 200, "{body}");
        let statuses = h.wait_for_statuses(1).await;
        assert_eq!(status_names(&statuses), ["failed"]);
        assert_eq!(statuses[0]["id"], wamid_of(&body).as_str());
        let error = &statuses[0]["errors"][0];
        assert_eq!(error["code"], 131026);
        assert!(error["title"].is_string() && error["message"].is_string());
        assert!(error["error_data"]["details"].is_string());
    }

    #[tokio::test]
    async fn a_number_ending_0002_is_accepted_then_fails_with_131050() {
        let h = harness().await;
        let (status, _) = h.send_to("15550000002").await;
        assert_eq!(status, 200);
        let statuses = h.wait_for_statuses(1).await;
        assert_eq!(status_names(&statuses), ["failed"]);
        assert_eq!(statuses[0]["errors"][0]["code"], 131050);
    }

    #[tokio::test]
    async fn a_number_ending_0003_is_throttled_twice_then_accepted() {
        let h = harness().await;
        for _ in 0..2 {
            let (status, body) = h.send_to("15550000003").await;
            assert_eq!(status, 429);
            assert_meta_error(&body, 130429);
        }
        // Another sender's counter is separate.
        let other = format!("{}/v23.0/999/messages", h.base);
        let request = h
            .http
            .post(other)
            .bearer_auth("t")
            .json(&template_to("15550000003"));
        assert_eq!(h.post(request).await.0, 429);

        let (status, body) = h.send_to("15550000003").await;
        assert_eq!(status, 200, "{body}");
        let statuses = h.wait_for_statuses(3).await;
        assert_eq!(status_names(&statuses), ["sent", "delivered", "read"]);
    }

    #[tokio::test]
    async fn every_message_to_a_number_ending_0003_is_throttled_twice_then_accepted() {
        let h = harness().await;
        for message in 1..=3 {
            for _ in 0..2 {
                let (status, body) = h.send_to("15550000003").await;
                assert_eq!(status, 429, "message {message}: {body}");
                assert_meta_error(&body, 130429);
            }
            let (status, body) = h.send_to("15550000003").await;
            assert_eq!(status, 200, "message {message}: {body}");
        }
    }

    /// A message that stopped being tried after one 130429 (its tenant suspended while it
    /// waited) leaves the next message to the number its own two: counted per message
    /// (`biz_opaque_callback_data`), not per recipient alone.
    #[tokio::test]
    async fn a_0003_message_given_up_after_one_refusal_leaves_the_next_its_own_two() {
        let h = harness().await;
        let mut first = template_to("15550000003");
        first["biz_opaque_callback_data"] = json!("msg-1");
        let (status, _) = h.send_json(&first).await;
        assert_eq!(status, 429);
        let mut next = template_to("15550000003");
        next["biz_opaque_callback_data"] = json!("msg-2");
        for _ in 0..2 {
            let (status, body) = h.send_json(&next).await;
            assert_eq!(status, 429, "{body}");
        }
        let (status, body) = h.send_json(&next).await;
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test]
    async fn a_number_ending_0004_always_answers_131000() {
        let h = harness().await;
        for _ in 0..4 {
            let (status, body) = h.send_to("15550000004").await;
            assert_eq!(status, 500);
            assert_meta_error(&body, 131000);
        }
        assert!(h.wait_for_statuses(0).await.is_empty());
    }

    #[tokio::test]
    async fn a_number_ending_0005_answers_only_after_the_slow_delay() {
        let h = harness().await;
        let started = Instant::now();
        let (status, body) = h.send_to("15550000005").await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(status, 200, "{body}");
        let statuses = h.wait_for_statuses(3).await;
        assert_eq!(status_names(&statuses), ["sent", "delivered", "read"]);
    }

    #[tokio::test]
    async fn a_number_ending_0005_is_still_sent_when_the_client_gives_up() {
        let h = harness().await;
        let impatient = h
            .http
            .post(h.messages_url())
            .bearer_auth("test-token")
            .timeout(Duration::from_millis(50))
            .json(&template_to("15550000005"));
        assert!(impatient.send().await.is_err_and(|e| e.is_timeout()));
        let statuses = h.wait_for_statuses(3).await;
        assert_eq!(status_names(&statuses), ["sent", "delivered", "read"]);
        let outbox = h.outbox().await;
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0]["response"]["status"], 200);
    }

    #[tokio::test]
    async fn a_number_ending_0006_answers_an_expired_token_error_190() {
        let h = harness().await;
        let (status, body) = h.send_to("15550000006").await;
        assert_eq!(status, 401);
        assert_meta_error(&body, 190);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("access token") && message.contains("expired"));
        assert!(h.wait_for_statuses(0).await.is_empty());
    }

    #[tokio::test]
    async fn a_number_ending_0007_answers_template_does_not_exist_132001() {
        let h = harness().await;
        let (status, body) = h.send_to("15550000007").await;
        assert_eq!(status, 404);
        assert_meta_error(&body, 132001);
        assert!(h.wait_for_statuses(0).await.is_empty());
    }

    #[tokio::test]
    async fn a_number_ending_0008_sends_read_delivered_sent_each_twice() {
        let h = harness().await;
        let (status, body) = h.send_to("15550000008").await;
        assert_eq!(status, 200);
        let statuses = h.wait_for_statuses(6).await;
        assert_eq!(
            status_names(&statuses),
            ["read", "read", "delivered", "delivered", "sent", "sent"]
        );
        let wamid = wamid_of(&body);
        assert!(statuses.iter().all(|s| s["id"] == wamid.as_str()));
    }

    #[tokio::test]
    async fn a_body_failing_the_schema_is_rejected_with_code_100() {
        let h = harness().await;
        let mut message = template_to("15551234567");
        message.as_object_mut().expect("object").remove("to");
        let (status, body) = h.send_json(&message).await;
        assert_eq!(status, 400);
        assert_meta_error(&body, 100);
        let details = body["error"]["error_data"]["details"]
            .as_str()
            .unwrap_or("");
        assert!(details.contains("\"to\""), "{details}");

        let mut message = template_to("15551234567");
        message["surprise"] = json!(true);
        let (status, body) = h.send_json(&message).await;
        assert_eq!(status, 400);
        assert_meta_error(&body, 100);
        assert!(h.wait_for_statuses(0).await.is_empty());
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_rejected_with_code_100_and_recorded_as_text() {
        let h = harness().await;
        let request = h
            .http
            .post(h.messages_url())
            .bearer_auth("test-token")
            .header(header::CONTENT_TYPE, "application/json")
            .body("{not json");
        let (status, body) = h.post(request).await;
        assert_eq!(status, 400);
        assert_meta_error(&body, 100);
        let outbox = h.outbox().await;
        assert_eq!(outbox[0]["request"], "{not json");
    }

    #[tokio::test]
    async fn a_request_without_a_bearer_token_is_rejected_with_code_190() {
        let h = harness().await;
        let without = h
            .http
            .post(h.messages_url())
            .json(&template_to("15551234567"));
        let (status, body) = h.post(without).await;
        assert_eq!(status, 401);
        assert_meta_error(&body, 190);

        let basic = h
            .http
            .post(h.messages_url())
            .basic_auth("user", Some("pass"))
            .json(&template_to("15551234567"));
        assert_eq!(h.post(basic).await.0, 401);

        let empty = h
            .http
            .post(h.messages_url())
            .header(header::AUTHORIZATION, "Bearer ")
            .json(&template_to("15551234567"));
        assert_eq!(h.post(empty).await.0, 401);
        assert!(h.wait_for_statuses(0).await.is_empty());
    }

    #[tokio::test]
    async fn more_than_the_rate_limit_per_second_answers_130429() {
        let h = harness_with(|cfg| cfg.rate_limit_per_sec = 5).await;
        let mut answers = Vec::new();
        for _ in 0..6 {
            answers.push(h.send_to("15551234567").await);
        }
        let limited: Vec<&Value> = answers
            .iter()
            .filter(|(status, _)| *status == 429)
            .map(|(_, body)| body)
            .collect();
        assert!(!limited.is_empty(), "{answers:?}");
        assert_meta_error(limited[0], 130429);

        // The limit is per phone number id.
        let other = format!("{}/v23.0/999/messages", h.base);
        let request = h
            .http
            .post(other)
            .bearer_auth("t")
            .json(&template_to("15551234567"));
        assert_eq!(h.post(request).await.0, 200);

        // And the window rolls.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(h.send_to("15551234567").await.0, 200);
    }

    /// Refused attempts do not count toward the rolling second: a sender that keeps
    /// trying above the limit still gets the limit through each second, as at Meta.
    #[tokio::test]
    async fn attempts_refused_over_the_limit_do_not_hold_back_the_next_second() {
        let h = harness_with(|cfg| cfg.rate_limit_per_sec = 3).await;
        for _ in 0..3 {
            assert_eq!(h.send_to("15551234568").await.0, 200);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        for _ in 0..5 {
            assert_eq!(h.send_to("15551234568").await.0, 429, "over the limit");
        }
        // A second after the first three (not after the refused ones): three more go.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..3 {
            assert_eq!(h.send_to("15551234568").await.0, 200);
        }
    }

    #[tokio::test]
    async fn the_outbox_lists_requests_oldest_first_with_their_answers() {
        let h = harness().await;
        // The slow one arrives first and is answered last.
        let slow = {
            let request = h
                .http
                .post(h.messages_url())
                .bearer_auth("test-token")
                .json(&template_to("15550000005"));
            tokio::spawn(request.send())
        };
        // Wait until it has arrived (it is recorded only once answered).
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.sandbox.inner.next_seq.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.send_to("15550000004").await.0, 500);
        assert_eq!(h.send_to("15551234567").await.0, 200);
        let slow = slow.await.expect("task").expect("slow answer");
        assert_eq!(slow.status().as_u16(), 200);

        let outbox = h.outbox().await;
        let recipients: Vec<&str> = outbox
            .iter()
            .map(|m| m["request"]["to"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(recipients, ["15550000005", "15550000004", "15551234567"]);
        let statuses: Vec<u64> = outbox
            .iter()
            .map(|m| m["response"]["status"].as_u64().unwrap_or_default())
            .collect();
        assert_eq!(statuses, [200, 500, 200]);
        assert_eq!(outbox[1]["response"]["body"]["error"]["code"], 131000);
        assert_eq!(outbox[0]["phone_number_id"], PHONE_NUMBER_ID);
        assert_eq!(outbox[0]["version"], "v23.0");
        assert!(outbox[0]["received_at"].is_string());

        // The typed view holds the same data.
        let typed = h.sandbox.received();
        let as_json = serde_json::to_value(&typed).expect("serialize");
        assert_eq!(as_json, Value::Array(outbox));
        let round_trip: Vec<ReceivedRequest> =
            serde_json::from_value(as_json).expect("deserialize");
        assert_eq!(round_trip, typed);
    }

    #[tokio::test]
    async fn reset_clears_the_outbox_and_the_counters() {
        let h = harness().await;
        assert_eq!(h.send_to("15550000003").await.0, 429);
        assert_eq!(h.send_to("15550000003").await.0, 429);
        let url = format!("{}/_sandbox/reset", h.base);
        let (status, _) = h.post(h.http.post(url)).await;
        assert_eq!(status, 200);
        assert!(h.outbox().await.is_empty());
        assert_eq!(h.send_to("15550000003").await.0, 429);
        assert_eq!(h.outbox().await.len(), 1);
    }

    #[tokio::test]
    async fn a_refused_webhook_delivery_is_retried() {
        let h = harness().await;
        h.receiver.refuse_next.store(2, Ordering::SeqCst);
        assert_eq!(h.send_to("15550000001").await.0, 200);
        let statuses = h.wait_for_statuses(1).await;
        assert_eq!(status_names(&statuses), ["failed"]);
    }

    #[tokio::test]
    async fn without_a_webhook_url_messages_are_still_answered() {
        let sandbox = Sandbox::new(SandboxConfig {
            status_delay: Duration::from_millis(1),
            ..SandboxConfig::default()
        });
        let base = serve(sandbox.graph_router()).await;
        let response = reqwest::Client::new()
            .post(format!("{base}/v23.0/1/messages"))
            .bearer_auth("t")
            .json(&template_to("15551234567"))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sandbox.received().len(), 1);
    }

    #[tokio::test]
    async fn templates_meta_does_not_allow_are_refused_with_metas_codes() {
        let h = harness().await;
        let one = json!([{"type": "BODY", "parameters": [{"type": "text", "text": "x"}]}]);
        let cases = [
            ("no_such_template", one.clone(), 404, 132001),
            ("pending_notice", json!([]), 404, 132001),
            ("paused_promo", one.clone(), 400, 132015),
            ("order_update", json!([]), 400, 132000),
            (
                "order_update",
                json!([{"type": "body", "parameters": [{"type": "text", "text": "a"},
                    {"type": "text", "text": "b"}]}]),
                400,
                132000,
            ),
        ];
        for (name, components, status, code) in cases {
            let (got, body) = h
                .send_json(&template_named("15551234567", name, components))
                .await;
            assert_eq!(got, status, "{name}: {body}");
            assert_meta_error(&body, code);
        }
        // Component types in any case, as Meta reads them.
        let (got, body) = h
            .send_json(&template_named("15551234567", "promo_sale", one))
            .await;
        assert_eq!(got, 200, "{body}");
    }

    #[test]
    fn only_approved_templates_are_sent_and_the_others_refused_with_metas_codes() {
        let request = template_named(
            "15551234567",
            "t",
            json!([{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]),
        );
        for (status, refused) in [
            ("APPROVED", None),
            ("PENDING", Some((404, 132001))),
            ("REJECTED", Some((404, 132001))),
            ("ARCHIVED", Some((404, 132001))),
            ("IN_APPEAL", Some((404, 132001))),
            ("PAUSED", Some((400, 132015))),
            ("DISABLED", Some((400, 132016))),
        ] {
            let catalogue = [SandboxTemplate::new(1, "t", "UTILITY", status, 1)];
            let got = template_refusal(&catalogue, &request).map(|(http, body)| {
                let code = body.pointer("/error/code").and_then(Value::as_u64);
                (http.as_u16(), code.unwrap_or_default())
            });
            assert_eq!(got, refused, "{status}");
        }
    }

    #[tokio::test]
    async fn a_template_archived_through_the_sandbox_is_refused_until_approved_again() {
        let h = harness().await;
        let url = format!("{}/_sandbox/templates/{WABA}/promo_sale/en_US", h.base);
        let one = json!([{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]);
        let message = template_named("15551234567", "promo_sale", one);
        let send = || h.send_json(&message);

        let (status, body) = h
            .post(h.http.put(&url).json(&json!({"status": "archived"})))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["template"]["status"], "ARCHIVED");
        let (status, body) = send().await;
        assert_eq!(status, 404, "{body}");
        assert_meta_error(&body, 132001);

        let (status, body) = h
            .post(h.http.put(&url).json(&json!({"status": "approved"})))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = send().await;
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test]
    async fn location_coordinates_are_read_as_numbers_or_strings() {
        let h = harness().await;
        for (lat, long) in [
            (json!(3.139), json!(101.6869)),
            (json!("3.139"), json!("101.6869")),
        ] {
            let message = json!({
                "messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "15551234567", "type": "location",
                "location": {"latitude": lat, "longitude": long, "name": "KLCC"}
            });
            let (status, body) = h.send_json(&message).await;
            assert_eq!(status, 200, "{body}");
        }
    }

    #[tokio::test]
    async fn the_app_is_subscribed_to_a_waba_as_meta_answers_and_listed_once_it_is() {
        let h = harness().await;
        let url = format!("{}/v23.0/1000042/subscribed_apps", h.base);
        let (status, body) = h.post(h.http.get(&url).bearer_auth("t")).await;
        assert_eq!((status, body), (200, json!({"data": []})));
        let (status, body) = h.post(h.http.post(&url).json(&json!({}))).await;
        assert_eq!(status, 401, "{body}");
        assert_meta_error(&body, 190);
        assert!(!h.sandbox.subscribed("1000042"), "not without a token");
        let bad = format!("{}/v23.0/not-a-waba/subscribed_apps", h.base);
        let (status, body) = h.post(h.http.post(&bad).bearer_auth("t")).await;
        assert_eq!(status, 400, "{body}");
        for _ in 0..2 {
            let (status, body) = h.post(h.http.post(&url).bearer_auth("t")).await;
            assert_eq!((status, body), (200, json!({"success": true})));
        }
        assert!(h.sandbox.subscribed("1000042"));
        assert!(!h.sandbox.subscribed("1000043"), "only the WABA asked for");
        let (status, body) = h.post(h.http.get(&url).bearer_auth("t")).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["data"][0]["whatsapp_business_api_data"]["name"], "Kirim sandbox app",
            "{body}"
        );
    }

    /// A number is described with Meta's default fields and those asked for; a change of
    /// it (no webhook) is what the next read answers, and an error set for it is answered
    /// until it is ended.
    #[tokio::test]
    async fn a_number_is_described_as_meta_does_and_answers_what_it_was_changed_to() {
        let h = harness().await;
        let read = |fields: &str| {
            let url = format!("{}/v23.0/1000777?fields={fields}", h.base);
            h.post(h.http.get(url).bearer_auth("t"))
        };
        let (status, body) = read("id,quality_rating").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"id": "1000777", "display_phone_number": "15551000777",
                "verified_name": "Kirim Sandbox", "quality_rating": "GREEN"})
        );
        let (status, body) = read("quality_rating,bogus_field").await;
        assert_eq!(status, 400, "{body}");
        assert_meta_error(&body, 100);
        let (status, body) = h
            .post(h.http.get(format!("{}/v23.0/1000777", h.base)))
            .await;
        assert_eq!(status, 401, "{body}");
        let put = |change: Value| {
            let url = format!("{}/_sandbox/phone-numbers/1000777", h.base);
            h.post(h.http.put(url).json(&change))
        };
        let (status, body) = put(json!({"quality_rating": "yellow", "throughput": "HIGH"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            put(json!({"throughput": "ludicrous"})).await.0,
            400,
            "refused"
        );
        let (_, body) = read("throughput,messaging_limit_tier,name_status").await;
        assert_eq!(
            (
                &body["quality_rating"],
                &body["throughput"],
                &body["messaging_limit_tier"]
            ),
            (
                &json!("YELLOW"),
                &json!({"level": "HIGH"}),
                &json!("TIER_1K")
            ),
            "{body}"
        );
        assert!(lock(&h.receiver.bodies).is_empty(), "no webhook");
        assert_eq!(put(json!({"error": 131000})).await.0, 200);
        let (status, body) = read("quality_rating").await;
        assert_eq!(status, 500, "{body}");
        assert_meta_error(&body, 131000);
        assert_eq!(put(json!({"error": null})).await.0, 200);
        assert_eq!(read("quality_rating").await.0, 200);
        assert_eq!(h.sandbox.phone_number("1000777").throughput, "HIGH");
    }

    async fn list_page(h: &Harness, waba: &str, after: Option<&str>) -> (u16, Value) {
        let mut url = format!("{}/v23.0/{waba}/message_templates?limit=100", h.base);
        if let Some(a) = after {
            url.push_str(&format!("&after={a}"));
        }
        h.post(h.http.get(url).bearer_auth("t")).await
    }

    #[tokio::test]
    async fn the_catalogue_is_listed_in_small_pages_with_metas_cursors() {
        let h = harness().await;
        let mut after: Option<String> = None;
        let mut names = Vec::new();
        let mut pages = 0;
        loop {
            let (status, body) = list_page(&h, WABA, after.as_deref()).await;
            assert_eq!(status, 200, "{body}");
            pages += 1;
            let data = body["data"].as_array().cloned().unwrap_or_default();
            assert!(data.len() <= TEMPLATE_PAGE_SIZE);
            for t in &data {
                names.push(format!(
                    "{}/{}/{}",
                    t["name"].as_str().unwrap_or_default(),
                    t["category"].as_str().unwrap_or_default(),
                    t["status"].as_str().unwrap_or_default()
                ));
                assert_eq!(t["components"][1]["type"], "BODY");
            }
            if body["paging"].get("next").is_none() {
                break;
            }
            // Meta's `next` link, followed as a client does, answers the next page.
            let next = body["paging"]["next"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (s, followed) = h.post(h.http.get(&next).bearer_auth("t")).await;
            assert_eq!(s, 200, "{next}: {followed}");
            assert_eq!(
                followed["paging"]["cursors"]["before"], body["paging"]["cursors"]["after"],
                "{next}"
            );
            after = body["paging"]["cursors"]["after"]
                .as_str()
                .map(str::to_owned);
        }
        assert_eq!(pages, 3);
        assert_eq!(
            names,
            [
                "order_update/UTILITY/APPROVED",
                "promo_sale/MARKETING/APPROVED",
                "login_code/AUTHENTICATION/APPROVED",
                "paused_promo/MARKETING/PAUSED",
                "pending_notice/UTILITY/PENDING"
            ]
        );
        let without = h
            .http
            .get(format!("{}/v23.0/{WABA}/message_templates", h.base));
        assert_eq!(h.post(without).await.0, 401);
        assert_eq!(list_page(&h, WABA, Some("zz")).await.0, 400);
    }

    #[tokio::test]
    async fn a_user_writing_in_is_sent_as_metas_signed_inbound_webhook_that_kirim_reads() {
        use kirim::domain::meta::{parse_notification, MetaEvent};
        let h = harness().await;
        let url = format!("{}/_sandbox/inbound", h.base);
        let (status, body) = h
            .post(h.http.post(&url).json(&json!({"phone_number_id": "1234567",
                "from": "+60123456789", "user_id": "MY.777", "button": "STOP"})))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["delivered"], true);
        let hooks = lock(&h.receiver.bodies).clone();
        assert_eq!(hooks.len(), 1);
        assert_eq!(h.receiver.bad_signatures.load(Ordering::SeqCst), 0);
        let value = &hooks[0]["entry"][0]["changes"][0]["value"];
        assert_eq!(value["metadata"]["phone_number_id"], "1234567");
        assert_eq!(value["contacts"][0]["wa_id"], "60123456789");
        let events = parse_notification(hooks[0].to_string().as_bytes()).unwrap();
        let [MetaEvent::Inbound(m)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(
            m.from.as_ref().map(|p| p.to_string()).as_deref(),
            Some("+60123456789")
        );
        assert_eq!(m.from_user_id.as_ref().map(|u| u.as_str()), Some("MY.777"));
        assert!(m.request.is_some(), "a STOP button");
        assert!(m.timestamp.is_some());
        // Neither a phone nor a user id, or an unknown field: 400, nothing sent.
        for bad in [
            json!({"phone_number_id": "1"}),
            json!({"phone_number_id": "1", "from": "+1", "x": 1}),
        ] {
            let (status, _) = h.post(h.http.post(&url).json(&bad)).await;
            assert_eq!(status, 400, "{bad}");
        }
        assert_eq!(lock(&h.receiver.bodies).len(), 1);
    }

    #[tokio::test]
    async fn a_changed_template_sends_metas_signed_webhooks_and_only_its_waba_changes() {
        let h = harness().await;
        let url = format!("{}/_sandbox/templates/{WABA}/promo_sale/en_US", h.base);
        let change = h
            .http
            .put(&url)
            .json(&json!({"status": "paused", "category": "utility", "quality": "red"}));
        let (status, body) = h.post(change).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["template"]["status"], "PAUSED");
        let hooks = lock(&h.receiver.bodies).clone();
        let fields: Vec<&str> = hooks
            .iter()
            .map(|b| {
                b["entry"][0]["changes"][0]["field"]
                    .as_str()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            fields,
            [
                "message_template_status_update",
                "template_category_update",
                "message_template_quality_update"
            ]
        );
        assert_eq!(hooks[0]["entry"][0]["id"], WABA);
        let value = &hooks[0]["entry"][0]["changes"][0]["value"];
        assert_eq!(value["event"], "PAUSED");
        assert_eq!(value["message_template_name"], "promo_sale");
        assert_eq!(value["message_template_language"], "en_US");
        let value = &hooks[1]["entry"][0]["changes"][0]["value"];
        assert_eq!(
            (&value["previous_category"], &value["new_category"]),
            (&json!("MARKETING"), &json!("UTILITY"))
        );
        assert_eq!(
            hooks[2]["entry"][0]["changes"][0]["value"]["new_quality_score"],
            "RED"
        );
        assert_eq!(h.receiver.bad_signatures.load(Ordering::SeqCst), 0);

        // Sends from this WABA see it paused; another WABA still has the default.
        let one = json!([{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]);
        let (status, body) = h
            .send_json(&template_named("15551234567", "promo_sale", one))
            .await;
        assert_eq!(status, 400);
        assert_meta_error(&body, 132015);
        // A token that listed another WABA's templates sends from that WABA's catalogue.
        let other_waba = h
            .http
            .get(format!("{}/v23.0/999/message_templates", h.base))
            .bearer_auth("other-business-token");
        assert_eq!(h.post(other_waba).await.0, 200);
        let from_other = h
            .http
            .post(h.messages_url())
            .bearer_auth("other-business-token")
            .json(&template_named(
                "15551234567",
                "promo_sale",
                json!([{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]),
            ));
        assert_eq!(h.post(from_other).await.0, 200);
        let other = h.sandbox.templates("999");
        assert!(other
            .iter()
            .any(|t| t.name == "promo_sale" && t.status == "APPROVED"));

        for (body, want) in [
            (json!({"status": "gone"}), 400),
            (json!({"colour": "red"}), 400),
        ] {
            let (status, _) = h.post(h.http.put(&url).json(&body)).await;
            assert_eq!(status, want, "{body}");
        }
        let missing = format!("{}/_sandbox/templates/{WABA}/nope/en_US", h.base);
        let (status, body) = h
            .post(h.http.put(missing).json(&json!({"status": "paused"})))
            .await;
        assert_eq!(status, 404);
        assert_meta_error(&body, 132001);
    }

    #[test]
    fn recipients_are_masked_in_logs_and_display_numbers_are_stable() {
        assert_eq!(mask("15551230001"), "*******0001");
        assert_eq!(mask("12"), "12");
        assert_eq!(display_phone_number("106540352242922"), "15552242922");
        assert_eq!(display_phone_number("42"), "15550000042");
    }

    #[test]
    fn the_config_debug_output_hides_the_app_secret() {
        let cfg = SandboxConfig::new("very-secret", "1");
        assert!(!format!("{cfg:?}").contains("very-secret"));
    }
}
