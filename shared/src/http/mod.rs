//! axum routers. Each Lambda serves one of them; local mode serves them all on one port.
//! Handlers are thin: parse, call a service, shape the answer.

pub mod access;
mod admin;
mod broadcasts;
mod callbacks;
#[cfg(test)]
mod cursor_props;
pub mod error;
mod export;
pub mod extract;
pub mod idempotency;
pub mod lambda;
mod numbers;
mod optouts;
mod templates;
mod users;
mod views;

use std::collections::HashMap;

use axum::extract::{DefaultBodyLimit, State};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use extract::{Path, Query};
use serde_json::json;

use crate::domain::{MessageId, MessageStatus, TenantId};
use crate::ports::MessageQuery;
use crate::service::{accounts, retention, send, webhook, Deps};
use access::TenantCtx;
use error::ApiError;
use extract::{JsonBody, MAX_BODY};
pub use views::MessageView;

#[derive(Clone)]
pub struct AppState {
    /// Shared, not copied: axum clones the state into every layer of every request, and
    /// `Deps` is some forty `Arc`s whose counters the cores would fight over (a tenth of
    /// the webhook's CPU, BENCHMARKS.md "Webhook side by side").
    pub deps: std::sync::Arc<Deps>,
    /// This process's request limiters (per key, per tenant, per webhook address).
    pub limits: std::sync::Arc<crate::service::limits::Limits>,
}

impl AppState {
    pub fn new(deps: Deps) -> Self {
        let limits = crate::service::limits::Limits::new(deps.settings.limits);
        Self {
            deps: std::sync::Arc::new(deps),
            limits: std::sync::Arc::new(limits),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// Common layers: body limit, request ids and the one error shape (also for routes
/// that do not exist).
fn finish(router: Router<AppState>, deps: Deps) -> Router {
    finish_serving(router, deps, Router::new(), false).into()
}

/// `meta_first`: the router holds Meta's webhook, whose notifications are answered before
/// any router is asked ([`MetaFirst`]).
fn finish_serving(
    router: Router<AppState>,
    deps: Deps,
    extra: Router,
    meta_first: bool,
) -> MetaFirst {
    let state = AppState::new(deps);
    let meta_state = meta_first.then(|| state.clone());
    let api = router
        // Access is checked for the matched route before any handler or body parsing.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
        ))
        .with_state(state)
        // No route here: a known path with another method is `405` (on AWS the API's
        // `$default` route brings such requests to admin_api, whose router may not serve the
        // path at all), anything else `404`.
        .fallback(|uri: axum::http::Uri| async move {
            if access::known_path(uri.path()) {
                StatusCode::METHOD_NOT_ALLOWED.into_response()
            } else {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
            }
        });
    // The layers every request passes wrap the router once, not each of its routes: a
    // `Router::layer` wraps every route in a boxed service of its own, which axum clones
    // (an allocation and the state's reference counts) on every request, one per layer
    // (BENCHMARKS.md "Webhook side by side"). The body limit here is the default; a route
    // that needs more room sets its own inside.
    let api = tower::ServiceBuilder::new()
        .layer(error::RequestIdLayer)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .service(api);
    MetaFirst {
        state: meta_state,
        inner: Router::new()
            .fallback_service(api)
            // Extra routes keep their own answers (the sandbox speaks Meta's error shape),
            // with the request id's header.
            .merge(extra.layer(axum::middleware::from_fn(error::request_id_header))),
    }
}

/// A host's whole service: Meta's notifications (`POST /webhooks/meta`, three of a
/// message's four requests) go straight to their handler, with what the request-id layer
/// does (the request's id, span and error shape; the span is made with its route), and
/// every other request to the router. Meta's notifications skip the route lookups (the
/// outer one, which holds the sandbox's and the console's routes in local mode, and the
/// API's), the boxed route services axum clones for every request and the access gate,
/// which has nothing to check on Meta's route (the handler verifies Meta's signature):
/// together a tenth of the webhook's CPU (BENCHMARKS.md "Webhook side by side"). The
/// access table still lists the route; every other request, the subscription handshake
/// included, goes through the router. `state` is `None` where the router does not serve
/// Meta's webhook. Serve it as it is (local mode), or make it a [`Router`] with `into()`.
#[derive(Clone)]
pub struct MetaFirst {
    state: Option<AppState>,
    inner: Router,
}

impl From<MetaFirst> for Router {
    fn from(m: MetaFirst) -> Router {
        match m.state {
            // Nothing to answer first: the router itself.
            None => m.inner,
            Some(_) => Router::new().fallback_service(m),
        }
    }
}

/// Meta's webhook answered around the request-id layer's work. The handler's future is
/// boxed where it is made: the request-id layer, the span and the task-local around it each
/// take it by value, and a pointer moves for less than its half kilobyte. The request goes
/// to the handler before either future is made, so that neither holds it; the caller boxes
/// the answer, and a box copies a future whole (BENCHMARKS.md "Webhook side by side", stop
/// 27).
fn meta_answer(
    state: AppState,
    req: axum::extract::Request,
) -> impl std::future::Future<Output = Result<Response, std::convert::Infallible>> {
    let answer = error::with_request_id(req, Some(META_WEBHOOK), |req| {
        // `map`, not an async block around it: that would hold the handler's future twice,
        // once as captured and once as awaited.
        Box::pin(futures::FutureExt::map(
            meta_notify(State(state), req),
            |answer| answer.unwrap_or_else(IntoResponse::into_response),
        ))
    });
    futures::FutureExt::map(answer, Ok)
}

/// Meta's route, as the access table and the router name it.
const META_WEBHOOK: &str = "/webhooks/meta";

impl tower::Service<axum::extract::Request> for MetaFirst {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        futures::future::BoxFuture<'static, Result<Response, std::convert::Infallible>>,
        axum::routing::future::RouteFuture<std::convert::Infallible>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // A router is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        match &self.state {
            Some(state)
                if req.method() == axum::http::Method::POST && req.uri().path() == META_WEBHOOK =>
            {
                futures::future::Either::Left(Box::pin(meta_answer(state.clone(), req)))
            }
            _ => futures::future::Either::Right(tower::Service::<axum::extract::Request>::call(
                &mut self.inner,
                req,
            )),
        }
    }
}

/// Tenant sending and reading routes (the send_api Lambda).
pub fn send_api_router(deps: Deps) -> Router {
    finish(send_api_routes(), deps)
}

/// Platform operator and administration routes (the admin_api Lambda), and the send API's
/// too: on AWS admin_api holds the HTTP API's `$default` route, which takes what no route
/// of the API does — among them `HEAD` on the send API's `GET` routes (API Gateway routes
/// by exact method), answered here as their `GET` is, as local mode answers them. (Its role
/// has every grant the send API's handlers use.)
pub fn admin_api_router(deps: Deps) -> Router {
    finish(admin_api_routes().merge(send_api_routes()), deps)
}

/// Meta's webhook (the webhook Lambda).
pub fn webhook_router(deps: Deps) -> MetaFirst {
    finish_serving(webhook_routes(), deps, Router::new(), true)
}

/// Every route on one router (local mode), plus `extra` routes (the sandbox), which
/// keep their own response shapes.
pub fn app(deps: Deps, extra: Router) -> MetaFirst {
    finish_serving(
        send_api_routes()
            .merge(admin_api_routes())
            .merge(webhook_routes()),
        deps,
        extra,
        true,
    )
}

fn send_api_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/account", get(get_account))
        .route("/v1/messages", post(post_message).get(list_messages))
        .route("/v1/messages/{id}", get(get_message).delete(cancel_message))
        .merge(optouts::routes())
        .merge(broadcasts::routes())
}

fn admin_api_routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/v1/platform/tenants", post(create_tenant))
        .route("/v1/platform/tenants/{id}", delete(admin::close_tenant))
        .route("/v1/platform/tenants/{id}/credits", post(top_up))
        .route(
            "/v1/platform/tenants/{id}/suspend",
            post(admin::suspend_tenant),
        )
        .route(
            "/v1/platform/tenants/{id}/resume",
            post(admin::resume_tenant),
        )
        .route(
            "/v1/platform/tenants/{id}/ip-allowlist",
            put(admin::put_tenant_allowlist),
        )
        .route(
            "/v1/platform/tenants/{id}/api-keys",
            post(admin::create_tenant_key),
        )
        .route(
            "/v1/platform/tenants/{id}/throughput",
            put(admin::put_tenant_throughput),
        )
        .route(
            "/v1/platform/tenants/{id}/limits",
            put(admin::put_tenant_limits),
        )
        .route(
            "/v1/platform/tenants/{id}/meta-token",
            put(admin::put_tenant_meta_token),
        )
        .route("/v1/platform/retention/run", post(run_retention))
        .route("/v1/platform/audit", get(admin::list_platform_audit))
        .route(
            "/v1/platform/audit/verify",
            get(admin::verify_platform_audit),
        )
        .route("/v1/platform/dead-letters", get(admin::list_dead_letters))
        .route(
            "/v1/platform/dead-letters/redrive",
            post(admin::redrive_dead_letters),
        )
        .route(
            "/v1/api-keys",
            get(admin::list_keys).post(admin::create_key),
        )
        .route("/v1/api-keys/{id}", delete(admin::revoke_key))
        .route("/v1/api-keys/{id}/rotate", post(admin::rotate_key))
        .route(
            "/v1/settings/ip-allowlist",
            get(admin::get_allowlist).put(admin::put_allowlist),
        )
        .route("/v1/audit", get(admin::list_audit))
        .route("/v1/audit/verify", get(admin::verify_audit))
        .merge(users::routes())
        .merge(export::routes())
        .merge(callbacks::routes())
        // The catalogue's sync calls Meta: this function is wired with the Meta client.
        .merge(templates::routes())
        // Adding a number syncs its WABA's catalogue: Meta again.
        .merge(numbers::routes())
}

fn webhook_routes() -> Router<AppState> {
    Router::new().route(META_WEBHOOK, get(meta_verify).post(meta_notify))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn create_tenant(
    State(s): State<AppState>,
    chosen: Option<axum::Extension<access::NewTenantId>>,
    JsonBody(req): JsonBody<accounts::NewTenant>,
) -> ApiResult {
    // The id the access middleware chose (its audit intent names the tenant's chain).
    let id = chosen.map_or_else(TenantId::generate, |axum::Extension(c)| c.0);
    let made = match accounts::onboard_as(&s.deps, id.clone(), req).await {
        Ok(made) => made,
        Err(e) => {
            let mut res = ApiError::from(e).into_response();
            // A server error may come after the write landed (its answer lost, and its
            // read-back failed too): the tenant may exist, and its chain must begin with
            // this onboarding (README, "The audit trail").
            if res.status().is_server_error() {
                res.extensions_mut().insert(access::AuditNote {
                    maybe_tenant: Some(id),
                    ..Default::default()
                });
            }
            return Ok(res);
        }
    };
    let (tenant, key) = (&made.tenant, &made.key);
    let body = json!({
        "tenant": views::TenantView::from(tenant),
        "admin_api_key": key.expose(),
    });
    let res = (StatusCode::CREATED, Json(body)).into_response();
    let mut details = json!({"tenant_id": tenant.id});
    // A number taken over from a closed tenant: which one (ids only).
    if let Some(closed) = &made.taken_from {
        details["phone_number_taken_from"] = json!(closed);
    }
    Ok(admin::noted(res, Some(&tenant.id), details))
}

pub(crate) fn tenant_path(id: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(id).ok_or_else(ApiError::not_found)
}

/// A path's id of a record Kirim minted (an API key, a user, a broadcast: a ULID).
/// Anything else names nothing (`404`), before it reaches a store key (DynamoDB refuses a
/// sort key over 1 KB: a 500).
pub(crate) fn minted_path(id: &str) -> Result<&str, ApiError> {
    ulid::Ulid::from_string(id)
        .map(|_| id)
        .map_err(|_| ApiError::not_found())
}

/// A path's phone number id: Meta's numeric id, or no number (`404`).
pub(crate) fn number_path(id: &str) -> Result<&str, ApiError> {
    crate::service::numbers::check_numeric_id("phone_number_id", id)
        .map(|()| id)
        .map_err(|_| ApiError::not_found())
}

async fn top_up(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: idempotency::Keyed<accounts::TopUp>,
) -> ApiResult {
    let tenant = tenant_path(&id)?;
    let mut details = json!({"amount": body.req.amount, "reference": body.req.reference});
    let done = accounts::top_up(&s.deps, &tenant, body.req, body.idem.as_ref()).await?;
    let answer = json!({"tenant_id": tenant, "balance": done.balance});
    let mut res = (StatusCode::CREATED, Json(answer)).into_response();
    if done.replayed {
        idempotency::mark_replayed(&mut res);
        details["replayed"] = json!(true);
    }
    Ok(admin::noted(res, Some(&tenant), details))
}

async fn run_retention(State(s): State<AppState>) -> ApiResult {
    let report = retention::run_with(&s.deps, retention::Limits::interactive()).await?;
    Ok(Json(report).into_response())
}

async fn get_account(State(s): State<AppState>, ctx: TenantCtx) -> ApiResult {
    let quality = crate::service::quality::of(&s.deps, ctx.tenant_id()).await?;
    // The access check's tenant may come from the warm-process cache: the balance is
    // read afresh.
    let tenant = s
        .deps
        .tenants
        .get_tenant(ctx.tenant_id())
        .await
        .map_err(crate::service::errors::ServiceError::from)?
        .unwrap_or(ctx.tenant);
    Ok(Json(views::AccountView::new(&tenant, quality)).into_response())
}

async fn post_message(
    State(s): State<AppState>,
    ctx: TenantCtx,
    body: idempotency::SendBody,
) -> ApiResult {
    let accepted = send::send_once(&s.deps, ctx.tenant_id(), body.req, body.idem.as_ref()).await?;
    let details = match &accepted {
        send::Accepted::New(record) => json!({
            "message_id": record.id,
            "to": record.to.masked(),
            "template": record.template.as_ref().map(|t| t.name.clone()),
        }),
        send::Accepted::Replayed(id, _) => json!({"message_id": id, "replayed": true}),
    };
    Ok(admin::noted(
        idempotency::accepted_response(accepted),
        None,
        details,
    ))
}

async fn get_message(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
) -> ApiResult {
    let tenant_id = ctx.tenant_id();
    let id = MessageId::parse(&id).ok_or_else(ApiError::not_found)?;
    let m = s
        .deps
        .messages
        .get_message(tenant_id, &id)
        .await
        .map_err(crate::service::errors::ServiceError::from)?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(MessageView::from(&m)).into_response())
}

async fn cancel_message(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    _: extract::NoBody,
) -> ApiResult {
    let id = MessageId::parse(&id).ok_or_else(ApiError::not_found)?;
    let m = send::cancel_scheduled(&s.deps, ctx.tenant_id(), &id).await?;
    // (`status` in an event's details is the HTTP status: the middleware's.)
    let details = json!({"message_id": m.id, "message_status": m.status.as_str()});
    Ok(admin::noted(
        Json(MessageView::from(&m)).into_response(),
        None,
        details,
    ))
}

/// A query's RFC 3339 time (`since`, `until`); an offset whose `+` arrived as a space (a
/// URL written by hand, unencoded: `+08:00` read as ` 08:00`) is read as the `+` it was.
pub(crate) fn parse_time(name: &str, v: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(&broadcasts::offset_plus(v))
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| ApiError::invalid(format!("{name} must be an RFC 3339 time")))
}

/// A list's `since` (inclusive) after its `until` (exclusive), to the millisecond as the
/// stores compare them: `400 invalid_request` rather than an empty list, which would read as
/// "none in that time" when the two were given the wrong way round. Equal, it is an empty
/// window, answered an empty page as before (a poller's `since=<last seen>&until=<now>`
/// may meet it).
pub(crate) fn window(
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), ApiError> {
    match (since, until) {
        (Some(s), Some(u)) if s.timestamp_millis() > u.timestamp_millis() => {
            Err(ApiError::invalid(
                "since must not be after until (since is inclusive, until exclusive)",
            ))
        }
        _ => Ok(()),
    }
}

/// The query of a list that takes only `limit` (1 to 100, `default` when absent) and
/// `cursor` (`GET /v1/api-keys`, `GET /v1/users`, `GET /v1/opt-outs`), refused as the other
/// lists refuse theirs.
pub(crate) fn page_query(
    params: &HashMap<String, String>,
    default: usize,
) -> Result<(usize, Option<&str>), ApiError> {
    let (mut limit, mut cursor) = (default, None);
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| ApiError::invalid("limit must be 1 to 100"))?
            }
            "cursor" => cursor = Some(v.as_str()),
            other => return Err(ApiError::unknown_query_parameter(other)),
        }
    }
    Ok((limit, cursor))
}

async fn list_messages(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let tenant_id = ctx.tenant_id();
    let mut q = MessageQuery {
        limit: 50,
        ..Default::default()
    };
    let mut broadcast = None;
    for (k, v) in &params {
        match k.as_str() {
            "broadcast_id" => broadcast = Some(v.as_str()),
            "status" => {
                q.status = Some(MessageStatus::parse(v).map_err(|_| {
                    ApiError::invalid(
                        "status must be scheduled, accepted, sending, sent, delivered, read, \
                         failed or cancelled",
                    )
                })?)
            }
            "since" => q.since = Some(parse_time("since", v)?),
            "until" => q.until = Some(parse_time("until", v)?),
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| ApiError::invalid("limit must be 1 to 100"))?
            }
            "cursor" => q.cursor = Some(v.clone()),
            other => return Err(ApiError::unknown_query_parameter(other)),
        }
    }
    window(q.since, q.until)?;
    let page = match broadcast {
        // One campaign's messages, in id order (as `recipients.csv`); not the tenant's
        // campaign, or no campaign id at all: `404`, as `GET /v1/broadcasts/{id}`.
        Some(id) => {
            let id = minted_path(id)?;
            crate::service::broadcasts::messages_page(&s.deps, tenant_id, id, &q).await?
        }
        None => s
            .deps
            .messages
            .list_messages(tenant_id, &q)
            .await
            .map_err(crate::service::errors::ServiceError::from)?,
    };
    let messages: Vec<MessageView> = page.messages.iter().map(MessageView::from).collect();
    Ok(Json(json!({"messages": messages, "next_cursor": page.next_cursor})).into_response())
}

async fn meta_verify(
    State(s): State<AppState>,
    client: Option<axum::Extension<extract::ClientIp>>,
    // Meta's handshake: its three parameters right, or 403 (openapi); other parameters are
    // ignored, a repeated one reads as its last value (axum's own reading, not the API's,
    // which refuses a repeated parameter with 400).
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> ApiResult {
    // A wrong verify token counts against its address as a bad signature does, so an
    // operator's guessable token cannot be guessed at the request rate: past the
    // allowance the address is answered `429` before the token is compared.
    let addr = client.and_then(|c| c.0 .0);
    if let Err(wait) = s.limits.webhook_allowed(addr, s.deps.clock.now()) {
        crate::metrics::limited("webhook_bad_signatures");
        return Err(crate::service::errors::ServiceError::from(wait).into());
    }
    // Another mode (Meta's handshake is only ever `subscribe`) is said as such, before
    // any token is compared: not a guess, and no answer about the token.
    if params.get("hub.mode").map(String::as_str) != Some("subscribe") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "hub.mode must be subscribe",
        ));
    }
    let ok = webhook::verify_subscription(
        &s.deps,
        params.get("hub.mode").map(String::as_str),
        params.get("hub.verify_token").map(String::as_str),
    )
    .await?;
    match (ok, params.get("hub.challenge").filter(|c| !c.is_empty())) {
        (true, Some(challenge)) => Ok(challenge.clone().into_response()),
        // Said apart: a subscription set up with the right token but a challenge lost on
        // the way is not a token to look for.
        (true, None) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "hub.challenge is missing",
        )),
        _ => {
            // Counted when a token was given and is not the one (a guess); a handshake
            // missing its token or with another mode is a mistake, not a guess.
            if params
                .get("hub.verify_token")
                .is_some_and(|t| !t.is_empty())
            {
                s.limits.webhook_bad_signature(addr, s.deps.clock.now());
            }
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "verify token does not match",
            ))
        }
    }
}

/// Meta's notifications. Nothing is read from or written to the table before the
/// signature holds (the app secret comes from the secret store, through its cache), and
/// an address that sent too many bad signatures is refused before any HMAC is computed.
/// Meta batches many statuses in one POST, and documents a notification of up to 3 MB:
/// its bodies get that room (3 MiB), twelve times an API body's. (1 MiB before: a valid
/// batch between the two was refused on every delivery, until Meta gave up on it.)
const WEBHOOK_MAX_BODY: usize = 12 * MAX_BODY;

/// The busiest route, so it takes the request whole: no copy of its headers or client
/// address for extractors, and its body limit read here instead of a layer of its own.
/// Not an `async fn`: one keeps its arguments in its future for as long as it runs, and the
/// request's head is 224 bytes, copied again wherever the future is moved or boxed (the
/// webhook boxes it: BENCHMARKS.md "Webhook side by side", stop 27). What is needed of the
/// head is taken before the future is made.
fn meta_notify(
    State(s): State<AppState>,
    req: axum::extract::Request,
) -> impl std::future::Future<Output = ApiResult> {
    let (parts, body) = req.into_parts();
    let addr = parts
        .extensions
        .get::<extract::ClientIp>()
        .and_then(|c| c.0);
    let sig = parts.headers.get("x-hub-signature-256").cloned();
    drop(parts);
    meta_notify_body(s, addr, sig, body)
}

async fn meta_notify_body(
    s: AppState,
    addr: Option<std::net::IpAddr>,
    sig: Option<axum::http::HeaderValue>,
    body: axum::body::Body,
) -> ApiResult {
    // An address that spent its allowance of bad signatures is answered before its body is
    // read (up to 3 MiB each) or any HMAC is computed. Loopback alone, when what it sends is
    // signed in form, is still checked, and taken if the signature holds: local mode's
    // sandbox posts Meta's statuses from loopback, where a test client's forged webhooks
    // come from too, and its signed notifications are never refused for another's. (Any
    // other address could put a well-formed header on anything: the allowance must bound
    // its reads and HMACs.) A body over the limit is no signed notification of Meta's and
    // is counted as one with a bad signature.
    // The header's form is looked at only off the ordinary path (an address past its
    // allowance, a signature refused): a signed notification's is parsed once, where it
    // is verified.
    let well_formed = || crate::domain::signature::parse_signature_header(sig.as_ref()).is_some();
    let spent = s.limits.webhook_allowed(addr, s.deps.clock.now()).err();
    let checked_anyway = || addr.is_some_and(|a| a.is_loopback()) && well_formed();
    if let (Some(wait), false) = (spent, spent.is_some() && checked_anyway()) {
        crate::metrics::limited("webhook_bad_signatures");
        return Err(crate::service::errors::ServiceError::from(wait).into());
    }
    let body = match extract::body_at_most(body, WEBHOOK_MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                s.limits.webhook_bad_signature(addr, s.deps.clock.now());
            }
            return Err(e);
        }
    };
    let sig = sig.as_ref().map(axum::http::HeaderValue::as_bytes);
    if !webhook::verify_signature(&s.deps, &body, sig).await? {
        s.limits.webhook_bad_signature(addr, s.deps.clock.now());
        if let Some(wait) = spent {
            crate::metrics::limited("webhook_bad_signatures");
            return Err(crate::service::errors::ServiceError::from(wait).into());
        }
        // A body with a well-formed HMAC-SHA256 that is not the app secret's may be Meta's
        // own after the secret was set or rotated wrongly (then every status and opt-out
        // is refused until it is mended): it is logged, with its sender (at most the
        // address's allowance a minute), for the `WebhookBadSignature` alarm. An unsigned
        // or malformed one is anyone's.
        let peer = addr.map(|a| a.to_string());
        if well_formed() {
            tracing::warn!(
                peer = peer.as_deref().unwrap_or("unknown"),
                "webhook signature does not match the Meta app secret"
            );
        } else {
            tracing::debug!(
                peer = peer.as_deref().unwrap_or("unknown"),
                "webhook without a well-formed signature refused"
            );
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "X-Hub-Signature-256 does not match the body",
        ));
    }
    // Boxed: the applying future is some kilobytes (every store call it may await), and
    // held in place it would make each future around it as large, which the request-id
    // layer, the span and the task-local each move once more (a tenth of the webhook's
    // instructions went to those copies; BENCHMARKS.md "Webhook side by side").
    let summary = Box::pin(webhook::apply(&s.deps, &body)).await?;
    if summary.errors > 0 {
        // Meta delivers a webhook again until it gets a 2xx; applying a body twice
        // changes nothing, so a storage failure must not be acknowledged.
        tracing::error!(
            errors = summary.errors,
            applied = summary.applied,
            "webhook items not applied; asking Meta to deliver again"
        );
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "some items could not be applied; deliver the notification again",
        ));
    }
    // Written directly, not through `Json`: the same body for less work on the busiest route.
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        summary.received_body(),
    )
        .into_response())
}

#[cfg(test)]
mod meta_first_tests {
    use super::*;

    /// The size of the future `make` would make, without making one.
    fn size_of_made<F>(_make: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Meta's route boxes two futures a request ([`meta_answer`]'s and the handler's),
    /// and a box copies a future whole: neither may hold the request (240 bytes) or the
    /// handler's future twice (BENCHMARKS.md "Webhook side by side", stop 27: 1,080 and
    /// about 970 bytes before, 336 and 552 after, in a debug build). Bytes, not time.
    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn meta_s_route_boxes_futures_that_hold_neither_the_request_nor_a_future_twice() {
        let outer = size_of_made(|| meta_answer(todo!("never called"), todo!("never called")));
        let handler = size_of_made(|| meta_notify(todo!("never called"), todo!("never called")));
        assert!(
            outer <= 512,
            "the request-id layer's future is {outer} bytes"
        );
        assert!(handler <= 640, "Meta's handler's future is {handler} bytes");
    }

    #[test]
    fn the_route_answered_before_the_router_is_meta_s_in_the_access_table() {
        // MetaFirst skips the access gate: only a route whose access leaves nothing for the
        // gate to check may be answered that way.
        let rule = access::rule_for(&axum::http::Method::POST, META_WEBHOOK)
            .expect("the access table lists Meta's webhook");
        assert_eq!(rule.access, access::Access::Meta);
    }
}

#[cfg(test)]
mod query_time_tests {
    #[test]
    fn a_query_time_whose_plus_arrived_as_a_space_is_read_with_its_offset() {
        let want = chrono::DateTime::parse_from_rfc3339("2026-11-30T16:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .ok();
        for v in [
            "2026-12-01T00:00:00+08:00",
            "2026-12-01T00:00:00 08:00",
            "2026-11-30T16:00:00Z",
        ] {
            assert_eq!(super::parse_time("since", v).ok(), want, "{v}");
        }
        assert!(super::parse_time("since", "2026-12-01 00:00:00").is_err());
        assert!(super::parse_time("since", "yesterday").is_err());
    }
}
