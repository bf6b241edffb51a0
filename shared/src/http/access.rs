//! Who may call what: ONE table of every route and the access it needs, enforced by one
//! middleware before any handler (or body parsing) runs. A route missing from the table
//! is refused (fail closed), and a test walks the whole table.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::{bearer, ClientIp};
use super::AppState;
use crate::domain::{IpAllowList, Role, TenantId};
use crate::ports::{AuditOutcome, Tenant as TenantRecord, TenantStatus};
use crate::service::audit;
use crate::service::auth::{authenticate_naming_ended, Caller, EndedKey, Refused};
use crate::service::errors::ServiceError;
use crate::service::limits::Principal;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health).
    Public,
    /// Meta: the handler checks the webhook signature or verify token itself.
    Meta,
    /// The platform operator token only.
    Platform,
    /// A tenant credential with at least this role; API keys only from an allowed IP.
    Tenant(Role),
    /// A console user's session, any role (its own 2FA and logout); not an API key.
    Session,
}

#[derive(Clone, Copy, Debug)]
pub struct RouteRule {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// A tenant route whose work grows with the tenant's data rather than with the request
    /// (up to its 20 s bound), and its class: at most one such request of a tenant and class
    /// is in flight at a time, across every instance ([`HEAVY_LEASE`]); another meanwhile
    /// is `429`. The classes do not hold each other (a campaign's `recipients.csv`, open to
    /// every role, does not keep the admin's export from its turn). The operator's
    /// platform-wide one ([`Heavy::Platform`]) holds the platform's lease, one at a time.
    pub heavy: Option<Heavy>,
}

const fn rule(method: &'static str, path: &'static str, access: Access) -> RouteRule {
    RouteRule {
        method,
        path,
        access,
        heavy: None,
    }
}

/// `r`, one at a time per tenant with the other routes of `class` ([`RouteRule::heavy`]).
const fn heavy(class: Heavy, r: RouteRule) -> RouteRule {
    RouteRule {
        heavy: Some(class),
        ..r
    }
}

use crate::ports::Heavy;
use Access::{Meta, Platform, Public, Session, Tenant};
use Role::{Admin, Operator, ReadOnly};

/// Every route the routers serve, with the access it needs (API.md "Roles").
pub const ROUTES: &[RouteRule] = &[
    rule("GET", "/health", Public),
    rule("GET", "/webhooks/meta", Meta),
    rule("POST", "/webhooks/meta", Meta),
    rule("POST", "/v1/platform/tenants", Platform),
    rule("DELETE", "/v1/platform/tenants/{id}", Platform),
    rule("POST", "/v1/platform/tenants/{id}/credits", Platform),
    rule("POST", "/v1/platform/tenants/{id}/suspend", Platform),
    rule("POST", "/v1/platform/tenants/{id}/resume", Platform),
    rule("PUT", "/v1/platform/tenants/{id}/ip-allowlist", Platform),
    rule("POST", "/v1/platform/tenants/{id}/api-keys", Platform),
    rule("PUT", "/v1/platform/tenants/{id}/throughput", Platform),
    rule("PUT", "/v1/platform/tenants/{id}/limits", Platform),
    rule("PUT", "/v1/platform/tenants/{id}/meta-token", Platform),
    rule("POST", "/v1/platform/tenants/{id}/phone-numbers", Platform),
    rule(
        "DELETE",
        "/v1/platform/tenants/{id}/phone-numbers/{phone_number_id}",
        Platform,
    ),
    rule("POST", "/v1/platform/retention/run", Platform),
    rule("GET", "/v1/platform/audit", Platform),
    // Every retained event of the platform chain, up to 200,000 or 20 s a response: the
    // platform's own lease (one such verification at a time), not a tenant's.
    heavy(
        Heavy::Platform,
        rule("GET", "/v1/platform/audit/verify", Platform),
    ),
    rule("GET", "/v1/platform/dead-letters", Platform),
    rule("POST", "/v1/platform/dead-letters/redrive", Platform),
    rule("GET", "/v1/account", Tenant(ReadOnly)),
    // Every retained item of the tenant, 3 MiB or 20 s a response.
    heavy(
        Heavy::Account,
        rule("GET", "/v1/account/export", Tenant(Admin)),
    ),
    rule("GET", "/v1/messages", Tenant(ReadOnly)),
    rule("POST", "/v1/messages", Tenant(Operator)),
    rule("GET", "/v1/messages/{id}", Tenant(ReadOnly)),
    rule("DELETE", "/v1/messages/{id}", Tenant(Operator)),
    rule("POST", "/v1/broadcasts", Tenant(Operator)),
    rule("GET", "/v1/broadcasts", Tenant(ReadOnly)),
    rule("GET", "/v1/broadcasts/{id}", Tenant(ReadOnly)),
    rule("POST", "/v1/broadcasts/{id}/pause", Tenant(Operator)),
    rule("POST", "/v1/broadcasts/{id}/resume", Tenant(Operator)),
    rule("POST", "/v1/broadcasts/{id}/cancel", Tenant(Operator)),
    // Reads every message of the broadcast (up to 10,000) before it answers. A class of
    // its own: a `read_only` key's `recipients.csv` downloads must not hold an operator's.
    heavy(
        Heavy::Retry,
        rule("POST", "/v1/broadcasts/{id}/retry-failed", Tenant(Operator)),
    ),
    // Every message of the broadcast (up to 10,000) and its list, in one response.
    heavy(
        Heavy::Campaign,
        rule(
            "GET",
            "/v1/broadcasts/{id}/recipients.csv",
            Tenant(ReadOnly),
        ),
    ),
    rule("GET", "/v1/templates", Tenant(ReadOnly)),
    // Every page of the WABAs' catalogues from Meta, and a write per template, up to 20 s.
    heavy(
        Heavy::Account,
        rule("POST", "/v1/templates/sync", Tenant(Admin)),
    ),
    rule("GET", "/v1/phone-numbers", Tenant(ReadOnly)),
    rule(
        "PUT",
        "/v1/phone-numbers/{phone_number_id}/default",
        Tenant(Admin),
    ),
    rule(
        "POST",
        "/v1/phone-numbers/{phone_number_id}/resume",
        Tenant(Admin),
    ),
    rule("GET", "/v1/usage", Tenant(ReadOnly)),
    rule("GET", "/v1/opt-outs", Tenant(ReadOnly)),
    rule("GET", "/v1/opt-outs/{key}", Tenant(ReadOnly)),
    rule("PUT", "/v1/opt-outs/{key}", Tenant(Operator)),
    rule("DELETE", "/v1/opt-outs/{key}", Tenant(Admin)),
    rule("GET", "/v1/api-keys", Tenant(Admin)),
    rule("POST", "/v1/api-keys", Tenant(Admin)),
    rule("POST", "/v1/api-keys/{id}/rotate", Tenant(Admin)),
    rule("DELETE", "/v1/api-keys/{id}", Tenant(Admin)),
    rule("GET", "/v1/settings/ip-allowlist", Tenant(Admin)),
    rule("PUT", "/v1/settings/ip-allowlist", Tenant(Admin)),
    rule("GET", "/v1/settings/status-callback", Tenant(Admin)),
    rule("PUT", "/v1/settings/status-callback", Tenant(Admin)),
    rule("DELETE", "/v1/settings/status-callback", Tenant(Admin)),
    rule(
        "GET",
        "/v1/settings/status-callback/failures",
        Tenant(Admin),
    ),
    rule("GET", "/v1/audit", Tenant(Admin)),
    // Every retained event of the chain, up to 200,000 or 20 s a response.
    heavy(
        Heavy::Account,
        rule("GET", "/v1/audit/verify", Tenant(Admin)),
    ),
    rule("GET", "/v1/users", Tenant(Admin)),
    rule("POST", "/v1/users", Tenant(Admin)),
    rule("DELETE", "/v1/users/{id}", Tenant(Admin)),
    rule("PATCH", "/v1/users/{id}", Tenant(Admin)),
    rule("POST", "/v1/users/{id}/unlock", Tenant(Admin)),
    rule("DELETE", "/v1/users/{id}/2fa", Tenant(Admin)),
    rule("POST", "/v1/auth/login", Public),
    rule("POST", "/v1/auth/logout", Session),
    rule("POST", "/v1/auth/password", Session),
    rule("POST", "/v1/auth/2fa/enroll", Session),
    rule("POST", "/v1/auth/2fa/confirm", Session),
    rule("GET", "/v1/settings/2fa", Tenant(Admin)),
    rule("PUT", "/v1/settings/2fa", Tenant(Admin)),
];

/// Whether a request path (as sent: `{param}`s filled in) is one of the table's routes,
/// whatever the method: a method it does not have is `405`, not `404`.
pub fn known_path(path: &str) -> bool {
    let sent: Vec<&str> = path.split('/').collect();
    ROUTES.iter().any(|r| {
        let template: Vec<&str> = r.path.split('/').collect();
        template.len() == sent.len()
            && template.iter().zip(&sent).all(|(t, s)| {
                if t.starts_with('{') {
                    !s.is_empty()
                } else {
                    t == s
                }
            })
    })
}

/// The route `method path` (a path template), if the table has it. `HEAD` is `GET`'s
/// (RFC 9110: a server that answers GET answers HEAD; the router serves it with GET's
/// handler and no body), with GET's access.
pub fn rule_for(method: &Method, path: &str) -> Option<&'static RouteRule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES.iter().find(|r| r.path == path && r.method == method)
}

/// The mutating routes whose calls get no audit intent ([`audit::intend`]) before their
/// handler: the send hot path, whose every unit per message counts (issue #13), and whose
/// accepted send is recorded by the message item itself, written in the send's own
/// transaction (its event is appended after it). Public routes (the sign-in) get none
/// either: no credential has been checked when the intent would be written, so a flood of
/// anonymous requests would be a flood of writes (see [`authorize`]).
pub const NO_INTENT: &[(&str, &str)] = &[("POST", "/v1/messages")];

/// Whether a mutating call of `rule` writes an audit intent before its handler.
pub fn intends(rule: &RouteRule) -> bool {
    !matches!(rule.access, Access::Public | Access::Meta)
        && !NO_INTENT.contains(&(rule.method, rule.path))
}

/// The id an onboarding (`POST /v1/platform/tenants`) gives its tenant, chosen by the
/// middleware before the handler runs, so that the call's audit intent already names the
/// chain the onboarding will begin (set as a request extension).
#[derive(Clone, Debug)]
pub struct NewTenantId(pub TenantId);

/// The authenticated tenant caller of a tenant route, set by [`authorize`].
#[derive(Clone, Debug)]
pub struct TenantCtx {
    pub tenant: TenantRecord,
    pub caller: Caller,
}

impl TenantCtx {
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant.id
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TenantCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<TenantCtx>().cloned().ok_or_else(|| {
            tracing::error!("tenant route without a tenant rule in the access table");
            ApiError::from(ServiceError::Internal("no tenant context".into()))
        })
    }
}

/// A refusal, with whatever is known of the caller (for the audit trail).
struct Denial {
    error: ServiceError,
    caller: Option<Caller>,
    /// Refused before any per-key or per-tenant limit counted the request (a valid
    /// credential of the wrong kind for the route, or an API key from an address its
    /// tenant's allow-list refuses): counted against the address as refused credentials
    /// are, so a flood of them (a leaked key used from elsewhere) is not a flood of audit
    /// writes to the tenant's chain.
    by_address: bool,
    /// The ended API key presented (revoked or expired), named on the refusal's event.
    ended: Option<Box<EndedKey>>,
}

/// Counts the request against its key (or console user) and its tenant, with the
/// tenant's own limits from the record the check already loaded: no storage call.
/// Over a limit: `429 rate_limited`, and not audited (a flood must not become a flood of
/// audit writes); the `RateLimited` metric counts it.
fn admit(state: &AppState, tenant: &TenantRecord, caller: &Caller) -> Result<(), Denial> {
    let principal = match caller {
        Caller::ApiKey { key_id, .. } => Principal::ApiKey(key_id.clone()),
        Caller::Session { user_id, .. } => Principal::User(user_id.clone()),
        Caller::Operator => return Ok(()),
    };
    state
        .limits
        .admit_request(
            tenant.id.as_str(),
            &principal,
            tenant.request_limits,
            state.deps.clock.now(),
        )
        .map_err(|wait| {
            crate::metrics::limited("request");
            deny(wait.into(), caller)
        })
}

/// How long a heavy request's lease holds unless given back first: a little longer than
/// the longest such a request runs (each stops its work at 20 s; a Lambda invocation of
/// the API functions ends at 29 s). A process that dies holding one holds it no longer.
pub const HEAVY_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// The longest `Retry-After` a heavy request refused for its tenant's lease is told: the
/// request in flight usually ends well before its lease would lapse, so the wait is the
/// time to that lapse, at most this.
pub const HEAVY_RETRY_AFTER_MAX: u64 = 5;

/// How far apart two instances' clocks (or one clock across a step back) may be for a lease
/// one wrote to still hold for the other: a lease lapsing later than `now + HEAVY_LEASE +`
/// this was written by a clock further ahead, and is taken over at once rather than
/// blocking the tenant's heavy requests for as long as that clock is ahead. (Lambda's
/// clocks are kept within milliseconds of each other; this leaves room to spare.)
pub const HEAVY_LEASE_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(5);

/// A tenant's heavy-request lease, held by this request (its random owner token). Given
/// back by [`Lease::release`]; dropped without it (the handler panicked, or its future was
/// dropped: the client went away in local mode), it is given back from a task of its own
/// (should no runtime be there to run it, it lapses at its expiry).
struct Lease(Option<Held>);

/// What giving a [`Lease`] back needs.
struct Held {
    leases: std::sync::Arc<dyn crate::ports::HeavyRequestLeases>,
    tenant: TenantId,
    class: Heavy,
    owner: String,
}

impl Held {
    /// Gives it back (one conditional delete). A failure is harmless: it lapses at its
    /// expiry. Logged, never the request's answer (that has gone, or is going, out).
    fn release(self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = self
                .leases
                .release_heavy_lease(&self.tenant, self.class, &self.owner)
                .await
            {
                tracing::warn!(tenant_id = %self.tenant, error = %e, "heavy-request lease not given back: it lapses at its expiry");
            }
        })
    }
}

impl Lease {
    /// Gives it back ([`Held::release`]); its drop then has nothing left to do.
    fn release(mut self) -> futures::future::BoxFuture<'static, ()> {
        match self.0.take() {
            Some(held) => held.release(),
            None => Box::pin(async {}),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(held.release());
            }
        }
    }
}

/// The message of a heavy request refused because another of its tenant and class is in
/// flight: what is running, in the class's words (the code, `rate_limited`, and
/// `Retry-After` are those of any limit on use; clients go by them).
const fn in_flight(class: Heavy) -> &'static str {
    match class {
        Heavy::Account => {
            "another account-wide export, audit verification or template sync is in progress; \
             retry after the number of seconds in Retry-After"
        }
        Heavy::Campaign => {
            "another download of this account's campaign recipients is in progress; \
             retry after the number of seconds in Retry-After"
        }
        Heavy::Retry => {
            "another retry of failed campaign messages is in progress; \
             retry after the number of seconds in Retry-After"
        }
        Heavy::Platform => {
            "another platform audit verification is in progress; \
             retry after the number of seconds in Retry-After"
        }
    }
}

/// Takes the tenant's heavy-request lease for this request (one conditional put), or
/// answers why not: another heavy request of the tenant and class holds it (`RateLimited`:
/// `429 rate_limited` with `Retry-After`, as any limit on use, the caller's message naming
/// the class, [`in_flight`]), or the store failed (its error: the request
/// is not run unlimited).
async fn take_lease(
    state: &AppState,
    tenant: &TenantId,
    class: Heavy,
) -> Result<Lease, ServiceError> {
    let deps = &state.deps;
    let now = deps.clock.now();
    let until = now
        + chrono::Duration::from_std(HEAVY_LEASE).unwrap_or_else(|_| chrono::Duration::seconds(30));
    // A lease lapsing later than this was not written by a clock in step with this one.
    let furthest = until
        + chrono::Duration::from_std(HEAVY_LEASE_CLOCK_SKEW)
            .unwrap_or_else(|_| chrono::Duration::seconds(5));
    let owner = ulid::Ulid::new().to_string();
    match deps
        .heavy_leases
        .acquire_heavy_lease(tenant, class, &owner, now, until, furthest)
        .await?
    {
        crate::ports::HeavyLease::Taken => Ok(Lease(Some(Held {
            leases: deps.heavy_leases.clone(),
            tenant: tenant.clone(),
            class,
            owner,
        }))),
        crate::ports::HeavyLease::Held { until } => {
            crate::metrics::limited("heavy");
            // Whole seconds to the holder's lapse, rounded up, 1 to the maximum.
            let wait = until
                .and_then(|u| u64::try_from((u - now).num_milliseconds()).ok())
                .map_or(HEAVY_RETRY_AFTER_MAX, |ms| ms.div_ceil(1000));
            Err(ServiceError::RateLimited {
                retry_after_secs: wait.clamp(1, HEAVY_RETRY_AFTER_MAX),
            })
        }
    }
}

/// A heavy route's successful answer whose body is still to be produced, holding its
/// tenant's lease until it has been (an error answer, or one whose body is whole already,
/// gives it back before it is returned: no work is left in it):
/// the export and `recipients.csv` stream theirs page by page after the handler returned,
/// so the work goes on until the body ends. At its end (or an error that ends it) the lease
/// is given back before the end is reported: on Lambda, where the answer is read whole
/// before it is returned, within the invocation. A body dropped before its end (the client
/// went away, a `HEAD`'s) gives it back from a task of its own (the [`Lease`]'s drop, or
/// the release under way carried on); should that not run, the lease lapses at its expiry.
struct LeasedBody {
    inner: axum::body::Body,
    lease: Option<Lease>,
    /// The lease's release under way, and what the inner body ended with.
    releasing: Option<(futures::future::BoxFuture<'static, ()>, Option<Ended>)>,
}

/// How a body ended: a last error, or nothing (`None` from `poll_frame` is its end).
type Ended = Result<http_body::Frame<axum::body::Bytes>, axum::Error>;

impl http_body::Body for LeasedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.releasing.is_none() {
            let ended = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
                Poll::Ready(end) => end,
            };
            match this.lease.take() {
                Some(lease) => this.releasing = Some((lease.release(), ended)),
                None => return Poll::Ready(ended),
            }
        }
        let Some((release, _)) = this.releasing.as_mut() else {
            return Poll::Ready(None);
        };
        match release.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(this.releasing.take().and_then(|(_, ended)| ended)),
        }
    }

    /// Not ended while the lease is still to be given back: the reader polls once more,
    /// and the release runs before the end it is answered.
    fn is_end_stream(&self) -> bool {
        self.lease.is_none() && self.releasing.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LeasedBody {
    /// A lease not yet being given back goes with its own drop; a release under way is
    /// carried on.
    fn drop(&mut self) {
        if let Some((release, _)) = self.releasing.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(release);
            }
        }
    }
}

impl From<ServiceError> for Denial {
    fn from(error: ServiceError) -> Self {
        Refused::from(error).into()
    }
}

impl From<Refused> for Denial {
    fn from(Refused { error, ended }: Refused) -> Self {
        Denial {
            error,
            caller: None,
            by_address: false,
            ended,
        }
    }
}

fn deny(error: ServiceError, caller: &Caller) -> Denial {
    Denial {
        error,
        caller: Some(caller.clone()),
        by_address: false,
        ended: None,
    }
}

/// A refusal no per-key or per-tenant limit has counted: see [`Denial::by_address`].
fn deny_unmetered(error: ServiceError, caller: &Caller) -> Denial {
    Denial {
        by_address: true,
        ..deny(error, caller)
    }
}

async fn check(
    state: &AppState,
    parts: &Parts,
    access: Access,
) -> Result<Option<TenantCtx>, Denial> {
    let deps = &state.deps;
    match access {
        Access::Public | Access::Meta => Ok(None),
        Access::Platform => match authenticate_naming_ended(deps, bearer(parts)).await? {
            Caller::Operator => Ok(None),
            c @ (Caller::ApiKey { .. } | Caller::Session { .. }) => {
                Err(deny_unmetered(ServiceError::Forbidden, &c))
            }
        },
        Access::Tenant(required) => {
            let caller = authenticate_naming_ended(deps, bearer(parts)).await?;
            let tenant_id = match &caller {
                Caller::ApiKey { tenant_id, .. } | Caller::Session { tenant_id, .. } => tenant_id,
                // The operator token is not a tenant credential.
                Caller::Operator => return Err(deny_unmetered(ServiceError::Forbidden, &caller)),
            };
            let tenant = match deps
                .tenants
                .tenant_for_access(tenant_id)
                .await
                .map_err(ServiceError::from)?
            {
                Some(t) if t.status != TenantStatus::Closed => t,
                _ => return Err(deny(ServiceError::Unauthenticated, &caller)),
            };
            // The allow-list (API keys only) comes before the role: a caller from a
            // foreign address learns nothing about what its key could do.
            if let Caller::ApiKey { .. } = caller {
                let ip = parts.extensions.get::<ClientIp>().and_then(|c| c.0);
                let allowed = IpAllowList::parse(&tenant.ip_allowlist)
                    .map_err(|e| ServiceError::Internal(format!("stored allow-list: {e}")))?;
                if !allowed.allows(ip) {
                    return Err(deny_unmetered(ServiceError::IpNotAllowed, &caller));
                }
            }
            // Limits on use: after authentication (and the allow-list, so a foreign
            // address cannot use up a tenant's allowance), before the role and the handler.
            admit(state, &tenant, &caller)?;
            // Role, and for sessions the tenant's 2FA requirement.
            if let Err(e) = caller.tenant(required) {
                return Err(deny(e, &caller));
            }
            Ok(Some(TenantCtx { tenant, caller }))
        }
        Access::Session => {
            let caller = authenticate_naming_ended(deps, bearer(parts)).await?;
            let Caller::Session { tenant_id, .. } = &caller else {
                // API keys and the operator token are not console sessions.
                return Err(deny_unmetered(ServiceError::Forbidden, &caller));
            };
            let tenant = match deps
                .tenants
                .tenant_for_access(tenant_id)
                .await
                .map_err(ServiceError::from)?
            {
                Some(t) if t.status != TenantStatus::Closed => t,
                _ => return Err(deny(ServiceError::Unauthenticated, &caller)),
            };
            admit(state, &tenant, &caller)?;
            Ok(Some(TenantCtx { tenant, caller }))
        }
    }
}

/// What a handler adds to its call's audit event: the tenant it acted on (platform
/// routes) and non-sensitive details. Set as a response extension.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    pub tenant: Option<TenantId>,
    /// A tenant the call may have made though it answers an error (an onboarding whose
    /// write failed and could not be read back): the event goes to its chain if it exists
    /// when the event is recorded, else to the platform chain.
    pub maybe_tenant: Option<TenantId>,
    /// Who acted, when the handler knows better than the credential (a login).
    pub actor: Option<(&'static str, String)>,
    pub details: serde_json::Value,
    /// The outcome, when the handler knows better than the status: the password step of
    /// a 2FA sign-in answers `401 totp_required` (the contract), yet is no refusal but the
    /// step that asks for the code (`success`, result `totp_challenge`); a code step whose
    /// stored seed does not open answers the same `401`, yet is the operator's fault, not a
    /// refused guess (`error`, result `totp_seed_unopened`). `None`: by the status.
    pub outcome: Option<AuditOutcome>,
}

fn actor(caller: Option<&Caller>) -> (&'static str, String) {
    caller.map_or(("anonymous", "-".to_owned()), Caller::actor)
}

fn caller_tenant(caller: Option<&Caller>) -> Option<TenantId> {
    match caller {
        Some(Caller::ApiKey { tenant_id, .. } | Caller::Session { tenant_id, .. }) => {
            Some(tenant_id.clone())
        }
        _ => None,
    }
}

/// The tenant an operator route's path names (`/v1/platform/tenants/{id}/…`), if its
/// `{id}` is a well-formed tenant id.
fn tenant_in_path(route: &str, path: &str) -> Option<TenantId> {
    const PREFIX: &str = "/v1/platform/tenants/{id}";
    if !route.starts_with(PREFIX) {
        return None;
    }
    path.split('/').nth(4).and_then(TenantId::parse)
}

/// The one gate: looks the matched route up in [`ROUTES`] and checks the caller. Every
/// refusal and every mutating call is written to the audit trail.
pub async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let Some(rule) = rule_for(req.method(), matched.unwrap_or_default()) else {
        let path = matched.unwrap_or_default();
        // A known path with a method the table does not open: 405, as the router would.
        if ROUTES.iter().any(|r| r.path == path) {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        tracing::error!(route = %path, method = %req.method(), "route missing from the access table; refused");
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this route is not open")
            .into_response();
    };
    let path = rule.path;
    crate::telemetry::record("route", &path);
    if rule.access == Access::Meta {
        // Meta's webhook: no caller to check (the handler checks Meta's signature over the
        // raw body) and nothing audited here. Its busiest route skips the rest.
        return next.run(req).await;
    }
    let action = format!("{} {}", rule.method, rule.path);
    let addr = req.extensions().get::<ClientIp>().and_then(|c| c.0);
    let ip = addr.map(|ip| ip.to_string());
    let (mut parts, body) = req.into_parts();
    match check(&state, &parts, rule.access).await {
        Ok(ctx) => {
            // A heavy route: the tenant's one heavy request of its class at a time (the
            // platform's, for the operator's platform-wide one). Refused before anything
            // else is written (no audit intent, no event: a `429` is not audited).
            let holder = match (&ctx, rule.heavy) {
                (_, Some(Heavy::Platform)) => Some(crate::ports::platform_holder()),
                (Some(ctx), Some(_)) => Some(ctx.tenant_id().clone()),
                _ => None,
            };
            let lease = match (holder, rule.heavy) {
                (Some(holder), Some(class)) => match take_lease(&state, &holder, class).await {
                    Ok(lease) => Some(lease),
                    Err(error) => {
                        let (reason, refusal) = match error {
                            ServiceError::RateLimited { retry_after_secs } => (
                                "heavy_request_in_flight",
                                ApiError::rate_limited(in_flight(class), retry_after_secs),
                            ),
                            error => ("lease_unavailable", ApiError::from(error)),
                        };
                        tracing::info!(route = %path, method = %parts.method, outcome = "denied", reason, "request refused");
                        return refusal.into_response();
                    }
                },
                _ => None,
            };
            let caller = match &ctx {
                Some(ctx) => Some(ctx.caller.clone()),
                None if rule.access == Access::Platform => Some(Caller::Operator),
                None => None,
            };
            if let Some(c) = &caller {
                parts.extensions.insert(c.clone());
            }
            let tenant = ctx.as_ref().map(|c| c.tenant.id.clone());
            if let Some(t) = &tenant {
                crate::telemetry::record_tenant(t.as_str());
            }
            if let Some(ctx) = ctx {
                parts.extensions.insert(ctx);
            }
            let mutating = parts.method != Method::GET && parts.method != Method::HEAD;
            let about = (rule.access == Access::Platform)
                .then(|| tenant_in_path(rule.path, parts.uri.path()))
                .flatten();
            // An onboarding's tenant id, chosen here so that its intent names its chain.
            let onboarding = (rule.method == "POST" && rule.path == audit::ONBOARDING_ROUTE)
                .then(TenantId::generate);
            if let Some(id) = &onboarding {
                parts.extensions.insert(NewTenantId(id.clone()));
            }
            // Before a mutating handler runs, what it is about to attempt is written down
            // (one write): should this process die before the call's event is recorded
            // (a timeout in a Meta call, an out-of-memory), the retention function's
            // one-minute sweep records it as interrupted. Not written (its partition
            // throttled, the store down): the call goes ahead without it, logged and
            // counted — refusing an opt-out or a cancel because the safety net failed is
            // the worse outcome; only a death of this very call then goes unrecorded.
            let mut intent = None;
            let res = if mutating && intends(rule) {
                let (actor_type, actor_id) = actor(caller.as_ref());
                let draft = audit::Draft {
                    tenant: tenant.clone().or(about.clone()).or(onboarding),
                    actor_type,
                    actor_id,
                    action: action.clone(),
                    ip: ip.clone(),
                    outcome: AuditOutcome::Error,
                    details: serde_json::Value::Null,
                };
                match audit::intend(&state.deps, &draft).await {
                    Ok(id) => intent = Some(id),
                    Err(e) => {
                        tracing::warn!(error = %e, route = %path, method = %parts.method, "audit intent not written: the call goes ahead without one (should its process die, it is not recorded)");
                        crate::metrics::audit_intent_problem("not_written");
                    }
                }
                next.run(Request::from_parts(parts, body)).await
            } else {
                next.run(Request::from_parts(parts, body)).await
            };
            // Whether the intent must stay for the sweep: the call's event was lost.
            let mut keep_intent = false;
            // A request its handler refused for its rate (a login from a locked-out
            // address) is not audited, as one refused here: a flood of them, with no
            // credentials needed, must not become a flood of writes to a tenant's chain.
            // The failures that led to the lock-out were audited one by one. A handler
            // that notes its 429 (a user's locked second factor, after a right password)
            // has it audited.
            let noted = res.extensions().get::<AuditNote>().is_some();
            // A public route's request refused before its handler noted anything (a login
            // body that is not JSON, too large, of unknown fields): no credentials needed,
            // so counted against its address as refused credentials are, and once the
            // address's allowance is spent answered as it is, unaudited: a flood of them
            // must not become a flood of platform audit writes, nor skip the login limits'
            // spirit by never reaching them.
            // (Not the login's own 429 for a locked-out address: unaudited already, and
            // counting it would spend the allowance other clients behind the address share.)
            if mutating
                && rule.access == Access::Public
                && !noted
                && res.status().is_client_error()
                && res.status() != StatusCode::TOO_MANY_REQUESTS
            {
                let now = state.deps.clock.now();
                if state.limits.credentials_allowed(addr, now).is_err() {
                    crate::metrics::limited("bad_credentials");
                    return res;
                }
                state.limits.bad_credentials(addr, now);
            }
            if mutating && (res.status() != StatusCode::TOO_MANY_REQUESTS || noted) {
                let note = res
                    .extensions()
                    .get::<AuditNote>()
                    .cloned()
                    .unwrap_or_default();
                let status = res.status();
                let outcome = if let Some(outcome) = note.outcome {
                    outcome
                } else if status.is_success() {
                    AuditOutcome::Success
                } else if status == StatusCode::UNAUTHORIZED
                    || status == StatusCode::FORBIDDEN
                    || status == StatusCode::TOO_MANY_REQUESTS
                {
                    AuditOutcome::Denied
                } else {
                    AuditOutcome::Error
                };
                let mut details = match note.details {
                    serde_json::Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                };
                details.insert("status".into(), status.as_u16().into());
                let (actor_type, actor_id) = note.actor.unwrap_or_else(|| actor(caller.as_ref()));
                // The operator's call about a tenant goes in that tenant's chain, refused
                // or failed too (a success names it itself): if the tenant exists, so that
                // no chain is begun for an id that is no tenant's. So does an onboarding
                // that failed after its write may have landed: its tenant's chain begins
                // with it, not with the operator's next call about the tenant.
                let about = about.or(note.maybe_tenant);
                let operators = about.is_some();
                let mut named = match (tenant.or(note.tenant), about) {
                    (Some(t), _) => Some(t),
                    (None, Some(id)) => match state.deps.tenants.get_tenant(&id).await {
                        Ok(Some(_)) => Some(id),
                        _ => None,
                    },
                    (None, None) => None,
                };
                // A closed-out tenant's chain was given its last expiry by the close-out:
                // an event there after it (a repeated close, a top-up refused years later)
                // would outlive it, or, once its head has expired, begin a chain again
                // with no expiry at all. The operator's call is recorded on the platform
                // chain instead, naming the tenant. (The operator's calls only: no other
                // call can name a closed-out tenant for long — its keys and sessions
                // stopped at the closing, and its users, whose sign-in attempts are
                // audited on its chain, each moving its head's TTL on, expire with its
                // configuration; a read here for every sign-in would also make a known
                // email's answer slower than an unknown one's.)
                if operators {
                    if let Some(t) = named.clone() {
                        if matches!(state.deps.retention.closed_out_at(&t).await, Ok(Some(_))) {
                            details.insert("tenant_id".into(), t.to_string().into());
                            named = None;
                        }
                    }
                }
                keep_intent = !audit::record_or_park(
                    &state.deps,
                    audit::Draft {
                        tenant: named,
                        actor_type,
                        actor_id,
                        action,
                        ip,
                        outcome,
                        details: details.into(),
                    },
                )
                .await;
            }
            // Recorded or parked (or, a `429` unaudited, nothing to record): the intent
            // has served. One delete.
            if let (Some(id), false) = (&intent, keep_intent) {
                audit::forget_intent(&state.deps, id).await;
            }
            match lease {
                // A refusal or a failure is all there is to it (a short error body, not
                // the work), and so is an answer whose body is whole already (its length
                // known: verify's, sync's, retry-failed's): the lease goes back now, before
                // the answer leaves. Held in such a body, it would go back only when the
                // server polled the body past its last byte, after a client that counted
                // the `Content-Length` had read the answer and sent its next call.
                Some(lease)
                    if !res.status().is_success()
                        || http_body::Body::size_hint(res.body()).exact().is_some() =>
                {
                    lease.release().await;
                    res
                }
                // The work may go on in the body (the export's and `recipients.csv`'s
                // pages): the lease goes back as it ends.
                Some(lease) => res.map(|inner| {
                    axum::body::Body::new(LeasedBody {
                        inner,
                        lease: Some(lease),
                        releasing: None,
                    })
                }),
                None => res,
            }
        }
        Err(Denial {
            error: error @ ServiceError::RateLimited { .. },
            ..
        }) => {
            tracing::info!(route = %path, method = %parts.method, outcome = "denied", reason = "rate_limited", "request refused");
            ApiError::from(error).into_response()
        }
        Err(denial) => {
            let by_address = denial.by_address;
            let res = ApiError::from(denial.error).into_response();
            // An address that spent its allowance of refused credentials has its next
            // refusals answered `429`, unaudited (its refusals so far were each audited):
            // a flood of bad or missing keys must not become a flood of platform audit
            // writes. Its valid credentials still pass: another client behind the same
            // address is not held by this one's. A valid credential refused before any
            // limit counted it (the wrong kind for the route, or a key from an address its
            // allow-list refuses) is counted the same way.
            if res.status() == StatusCode::UNAUTHORIZED || by_address {
                let now = state.deps.clock.now();
                if let Err(wait) = state.limits.credentials_allowed(addr, now) {
                    crate::metrics::limited("bad_credentials");
                    tracing::info!(route = %path, method = %parts.method, outcome = "denied", reason = "rate_limited", "request refused");
                    return ApiError::from(ServiceError::from(wait)).into_response();
                }
                state.limits.bad_credentials(addr, now);
            }
            let code = res
                .extensions()
                .get::<super::error::ErrorInfo>()
                .map_or("denied", |i| i.code);
            tracing::info!(route = %path, method = %parts.method, outcome = "denied", reason = code, "request refused");
            let (actor_type, actor_id) = actor(denial.caller.as_ref());
            let mut details = serde_json::json!({"reason": code, "status": res.status().as_u16()});
            // An ended key is still no caller (the event stays anonymous, on the platform
            // chain), but which key it was, and whose, is named: the operator can tell
            // which revoked or rotated-out key a client still sends. Ids only.
            if let (Some(ended), Some(d)) = (denial.ended, details.as_object_mut()) {
                d.insert("key_id".into(), ended.key_id.into());
                d.insert("tenant_id".into(), ended.tenant_id.to_string().into());
                d.insert("key_ended".into(), ended.how.into());
            }
            audit::record_or_park(
                &state.deps,
                audit::Draft {
                    tenant: caller_tenant(denial.caller.as_ref()),
                    actor_type,
                    actor_id,
                    action,
                    ip,
                    // Refused credentials or role are `denied`; the check failing for
                    // want of storage or a secret (503, 500) is an `error`, as elsewhere.
                    outcome: if res.status() == StatusCode::UNAUTHORIZED
                        || res.status() == StatusCode::FORBIDDEN
                    {
                        AuditOutcome::Denied
                    } else {
                        AuditOutcome::Error
                    },
                    details,
                },
            )
            .await;
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes held to one at a time per tenant and class, and why (README "Limits"):
    /// each reads what grows with the tenant's data, not with its request. The audit search
    /// reads at most 1,000 events, the lists a page, `GET /v1/usage` at most 366 days:
    /// light. The account-wide ones (admin only), a campaign's `recipients.csv` (open to
    /// every role) and its retry (operators) are each a class apart: none keeps another
    /// from its turn.
    #[test]
    fn the_heavy_routes_are_the_tenant_routes_whose_work_grows_with_the_tenants_data() {
        let heavy: Vec<(&str, &str, Heavy)> = ROUTES
            .iter()
            .filter_map(|r| r.heavy.map(|c| (r.method, r.path, c)))
            .collect();
        assert_eq!(
            heavy,
            [
                ("GET", "/v1/platform/audit/verify", Heavy::Platform),
                ("GET", "/v1/account/export", Heavy::Account),
                ("POST", "/v1/broadcasts/{id}/retry-failed", Heavy::Retry),
                ("GET", "/v1/broadcasts/{id}/recipients.csv", Heavy::Campaign),
                ("POST", "/v1/templates/sync", Heavy::Account),
                ("GET", "/v1/audit/verify", Heavy::Account),
            ]
        );
        assert!(
            ROUTES
                .iter()
                .filter(|r| r.heavy.is_some_and(|c| c != Heavy::Platform))
                .all(|r| matches!(r.access, Access::Tenant(_))),
            "a tenant's class is a tenant's lease"
        );
        assert!(
            ROUTES
                .iter()
                .filter(|r| r.heavy == Some(Heavy::Platform))
                .all(|r| r.access == Access::Platform),
            "the platform's lease is the operator's alone"
        );
        assert!(
            ROUTES
                .iter()
                .filter(|r| r.heavy == Some(Heavy::Account))
                .all(|r| r.access == Access::Tenant(Admin)),
            "the account-wide class is the admin's alone"
        );
        // `HEAD` is `GET`'s, heavy too.
        assert!(rule_for(&Method::HEAD, "/v1/account/export")
            .is_some_and(|r| r.heavy == Some(Heavy::Account)));
    }
}
