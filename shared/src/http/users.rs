//! Console users, login and 2FA handlers. Access is checked by `access::authorize`.

use axum::extract::State;

use super::extract::{NoBody, Path};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use super::access::TenantCtx;
use super::error::{empty, ApiError};
use super::extract::JsonBody;
use super::{ApiResult, AppState};
use crate::service::users::{
    self, ConfirmRequest, LoginError, LoginRequest, NewUser, PasswordChange, RoleChange,
    TwoFactorSetting,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users", get(list_users).post(create_user))
        .route("/v1/users/{id}", delete(delete_user).patch(change_role))
        .route("/v1/users/{id}/unlock", post(unlock_user))
        .route("/v1/users/{id}/2fa", delete(reset_two_factor))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/password", post(change_password))
        .route("/v1/auth/2fa/enroll", post(enroll))
        .route("/v1/auth/2fa/confirm", post(confirm))
        .route("/v1/settings/2fa", get(get_two_factor).put(put_two_factor))
}

async fn create_user(
    State(s): State<AppState>,
    ctx: TenantCtx,
    JsonBody(req): JsonBody<NewUser>,
) -> ApiResult {
    let user = users::create(&s.deps, ctx.tenant_id(), req).await?;
    // The audit trail names who was added, and with which role (never the email).
    let details = json!({"user_id": user.id, "role": user.role});
    Ok(super::admin::noted(
        (StatusCode::CREATED, Json(user)).into_response(),
        None,
        details,
    ))
}

/// `GET /v1/users?limit=&cursor=`: a page of at most `limit` users (default 100, the
/// most), oldest first, and `next_cursor` (`null` on the last page).
async fn list_users(
    State(s): State<AppState>,
    ctx: TenantCtx,
    super::extract::Query(params): super::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult {
    let (limit, cursor) = super::page_query(&params, crate::ports::MAX_PAGE)?;
    let (list, next_cursor) = users::list(&s.deps, ctx.tenant_id(), limit, cursor).await?;
    Ok(Json(json!({"users": list, "next_cursor": next_cursor})).into_response())
}

async fn delete_user(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    _: NoBody,
) -> ApiResult {
    let id = super::minted_path(&id)?;
    users::delete(&s.deps, ctx.tenant_id(), &ctx.caller, id).await?;
    Ok(super::admin::noted(
        empty(StatusCode::NO_CONTENT),
        None,
        json!({"user_id": id}),
    ))
}

/// `PATCH /v1/users/{id}` `{"role"}`: the audit trail keeps the role before and after.
async fn change_role(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RoleChange>,
) -> ApiResult {
    let id = super::minted_path(&id)?;
    let changed = users::set_role(&s.deps, ctx.tenant_id(), &ctx.caller, id, req).await?;
    let details = json!({
        "user_id": id,
        "role": changed.user.role,
        "previous_role": changed.previous,
    });
    Ok(super::admin::noted(
        Json(changed.user).into_response(),
        None,
        details,
    ))
}

/// `POST /v1/users/{id}/unlock`: clears the user's failed-login counters.
async fn unlock_user(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    _: NoBody,
) -> ApiResult {
    let user = users::unlock(&s.deps, ctx.tenant_id(), super::minted_path(&id)?).await?;
    let res = Json(user).into_response();
    Ok(super::admin::noted(res, None, json!({"user_id": id})))
}

/// `DELETE /v1/users/{id}/2fa`: turns the user's 2FA off and ends their sessions. The
/// audit trail names whose (never the seed).
async fn reset_two_factor(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    _: NoBody,
) -> ApiResult {
    let id = super::minted_path(&id)?;
    let (user, changed) =
        users::reset_two_factor(&s.deps, ctx.tenant_id(), &ctx.caller, id).await?;
    let res = Json(user).into_response();
    let details = json!({"user_id": id, "changed": changed});
    Ok(super::admin::noted(res, None, details))
}

/// Marks a login refused because the user's second factor is locked (the password was
/// right): audited, unlike an address's lock-out.
#[derive(Clone, Copy)]
struct TotpLockedOut;

/// Marks the password step of a 2FA sign-in (right password, no code yet): answered
/// `401 totp_required` as a wrong code is, audited as no refusal.
#[derive(Clone, Copy)]
struct TotpChallenged;

/// Marks a code refused at a 2FA sign-in's code step (wrong, or used already): answered
/// `401 totp_required` as the challenge is, audited as the refused code it is
/// (`totp_invalid`).
#[derive(Clone, Copy)]
struct TotpRefused;

/// Marks a 2FA sign-in whose stored seed does not open (KMS refused its data key: an
/// operator's fault): answered `401 totp_required` as a wrong code is, audited as the
/// error it is (outcome `error`, result `totp_seed_unopened`), not as a guess.
#[derive(Clone, Copy)]
struct TotpSeedUnopened;

fn totp_required() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "totp_required",
        "a valid code from your authenticator app is required (totp_code)",
    )
    .into_response()
}

fn address_locked(retry_after_secs: u64) -> Response {
    ApiError::rate_limited(
        "too many failed login attempts from this address; try again after Retry-After seconds",
        retry_after_secs,
    )
    .into_response()
}

fn login_error(e: LoginError) -> Response {
    match e {
        LoginError::InvalidCredentials => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "email or password is wrong",
        )
        .into_response(),
        LoginError::TotpRequired => {
            let mut res = totp_required();
            res.extensions_mut().insert(TotpRefused);
            res
        }
        // The same answer (the contract): the fault is the operator's, audited as such.
        LoginError::TotpUnavailable => {
            let mut res = totp_required();
            res.extensions_mut().insert(TotpSeedUnopened);
            res
        }
        // The same answer: the client cannot tell a missing code from a wrong one.
        LoginError::TotpChallenge => {
            let mut res = totp_required();
            res.extensions_mut().insert(TotpChallenged);
            res
        }
        LoginError::RateLimited {
            retry_after_secs, ..
        } => address_locked(u64::try_from(retry_after_secs).unwrap_or(1)),
        LoginError::TotpLocked { retry_after_secs } => {
            let mut res = ApiError::rate_limited(
                "too many wrong codes for this user; try again after Retry-After seconds",
                u64::try_from(retry_after_secs).unwrap_or(1),
            )
            .into_response();
            res.extensions_mut().insert(TotpLockedOut);
            res
        }
        LoginError::Service(e) => ApiError::from(e).into_response(),
    }
}

async fn login(
    State(s): State<AppState>,
    client: Option<axum::Extension<super::extract::ClientIp>>,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Response {
    let addr = client.and_then(|c| c.0 .0);
    let (res, who) = login_response(&s, req, addr).await;
    // Refused for its address's rate (no credentials needed): not audited
    // (`access::authorize` skips a 429 that carries no note), so no lookup of whose login it
    // was either. A user's second factor locked after a right password is audited.
    let totp_locked = res.extensions().get::<TotpLockedOut>().is_some();
    if res.status() == StatusCode::TOO_MANY_REQUESTS && !totp_locked {
        return res;
    }
    // Whose login this was (as the attempt found the user: no second read), for the audit
    // trail (the tenant's chain, both outcomes). The password step of a 2FA sign-in is no
    // refusal: recorded `success`, result `totp_challenge` (its code step is recorded on its
    // own: `ok`, or `denied` with `totp_invalid` for a wrong or used code, or `error` with
    // `totp_seed_unopened` for a seed that does not open: the answer's `totp_required` is the
    // same for all, the trail tells them apart), so that every 2FA
    // sign-in does not begin with a denied login, and a wrong password still stands out.
    let challenged = res.extensions().get::<TotpChallenged>().is_some();
    let refused_code = res.extensions().get::<TotpRefused>().is_some();
    // A seed that does not open is no guess: recorded `error`, so that an operator's fault
    // (a KMS key policy edit) does not look like every 2FA user guessing codes.
    let seed_unopened = res.extensions().get::<TotpSeedUnopened>().is_some();
    let result = match res.status() {
        StatusCode::OK => "ok",
        _ if challenged => "totp_challenge",
        _ if seed_unopened => "totp_seed_unopened",
        _ if refused_code => "totp_invalid",
        _ if totp_locked => "totp_rate_limited",
        _ => res
            .extensions()
            .get::<super::error::ErrorInfo>()
            .map_or("error", |i| i.code),
    };
    let mut res = res;
    res.extensions_mut().insert(super::access::AuditNote {
        tenant: who.as_ref().map(|(tenant, _)| tenant.clone()),
        actor: who.map(|(_, id)| ("user", id)),
        details: json!({"result": result}),
        maybe_tenant: None,
        outcome: if challenged {
            Some(crate::ports::AuditOutcome::Success)
        } else if seed_unopened {
            Some(crate::ports::AuditOutcome::Error)
        } else {
            None
        },
    });
    res
}

async fn login_response(
    s: &AppState,
    req: LoginRequest,
    addr: Option<std::net::IpAddr>,
) -> (Response, Option<(crate::domain::TenantId, String)>) {
    // An address this instance saw locked out is refused here until its lock passes:
    // asking the table again is five conditional writes refused (billed) and a read.
    if let Some(wait) = s.limits.login_locked(addr, s.deps.clock.now()) {
        crate::metrics::limited("login");
        return (address_locked(wait), None);
    }
    let (result, who) = users::login_as(&s.deps, req, addr).await;
    if let Err(LoginError::RateLimited {
        address_locked_until: Some(until),
        ..
    }) = &result
    {
        s.limits
            .login_locked_until(addr, *until, s.deps.clock.now());
    }
    let res = match result {
        Ok(ok) => {
            let mut body = json!({
                "token": ok.token.expose(),
                "expires_at": ok.expires_at,
            });
            if ok.totp_enrollment_required {
                body["totp_enrollment_required"] = json!(true);
            }
            Json(body).into_response()
        }
        Err(e) => login_error(e),
    };
    (res, who)
}

/// The request's bearer token (a session's, on the session routes); empty if none.
fn bearer(headers: &HeaderMap) -> &str {
    super::extract::bearer_of(headers).unwrap_or_default()
}

async fn logout(State(s): State<AppState>, headers: HeaderMap, _: NoBody) -> ApiResult {
    users::logout(&s.deps, bearer(&headers)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn change_password(
    State(s): State<AppState>,
    ctx: TenantCtx,
    client: Option<axum::Extension<super::extract::ClientIp>>,
    JsonBody(req): JsonBody<PasswordChange>,
) -> ApiResult {
    let addr = client.and_then(|c| c.0 .0);
    match users::change_password(&s.deps, &ctx.caller, req, addr).await {
        Ok(()) => Ok(empty(StatusCode::NO_CONTENT)),
        Err(e) => refused(e),
    }
}

/// A service error as the answer: a credential refused ([`ServiceError::CredentialRefused`])
/// is answered as any bad request is and audited `denied` with its `result`, as a wrong
/// password at sign-in is; anything else as it maps.
fn refused(e: crate::service::errors::ServiceError) -> ApiResult {
    let crate::service::errors::ServiceError::CredentialRefused { result, .. } = &e else {
        return Err(e.into());
    };
    let result = *result;
    let mut res = ApiError::from(e).into_response();
    res.extensions_mut().insert(super::access::AuditNote {
        details: json!({"result": result}),
        outcome: Some(crate::ports::AuditOutcome::Denied),
        ..Default::default()
    });
    Ok(res)
}

async fn enroll(State(s): State<AppState>, ctx: TenantCtx, _: NoBody) -> ApiResult {
    let e = users::enroll(&s.deps, &ctx.caller).await?;
    Ok(Json(json!({
        "secret": e.secret.expose(),
        "otpauth_uri": e.otpauth_uri.expose(),
    }))
    .into_response())
}

async fn confirm(
    State(s): State<AppState>,
    ctx: TenantCtx,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ConfirmRequest>,
) -> ApiResult {
    match users::confirm(&s.deps, &ctx.caller, bearer(&headers), req).await {
        Ok(()) => Ok(Json(json!({"totp_enabled": true})).into_response()),
        Err(e) => refused(e),
    }
}

async fn get_two_factor(State(s): State<AppState>, ctx: TenantCtx) -> ApiResult {
    Ok(Json(users::two_factor_setting(&s.deps, ctx.tenant_id()).await?).into_response())
}

async fn put_two_factor(
    State(s): State<AppState>,
    ctx: TenantCtx,
    JsonBody(req): JsonBody<TwoFactorSetting>,
) -> ApiResult {
    let set = users::set_two_factor_setting(&s.deps, ctx.tenant_id(), req).await?;
    let details = json!({"required": set.required});
    Ok(super::admin::noted(
        Json(set).into_response(),
        None,
        details,
    ))
}
