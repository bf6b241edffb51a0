//! Administration handlers: the platform operator's tenant management, and a tenant
//! admin's API keys and settings. Access is checked by `access::authorize` beforehand.

use std::collections::HashMap;

use axum::extract::State;

use super::extract::{NoBody, Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::access::{AuditNote, TenantCtx};
use super::error::{empty, ApiError};
use super::extract::{JsonBody, OptionalJsonBody};
use super::{parse_time, tenant_path, views, ApiResult, AppState};
use crate::ports::{AuditQuery, TenantStatus};
use crate::service::accounts::{self, AllowListBody, OptionalReason, StatusChangeRequest};
use crate::service::apikeys::{self, KeyView, NewKey, Rotate};
use crate::service::audit;
use crate::service::deadletters::{self, QueueName, RedriveRequest};

fn tenant_json(t: &crate::ports::Tenant) -> serde_json::Value {
    json!({"tenant": views::TenantView::from(t), "status_reason": t.status_reason})
}

pub(super) async fn suspend_tenant(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<StatusChangeRequest>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let reason = req.reason.clone();
    let t = accounts::set_status(&s.deps, &id, TenantStatus::Suspended, Some(req.reason)).await?;
    let res = Json(tenant_json(&t)).into_response();
    Ok(with_reason(&s, res, &id, "tenant.suspend", Some(reason)).await)
}

pub(super) async fn resume_tenant(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<OptionalReason>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let reason = body.reason;
    let t = accounts::set_status(&s.deps, &id, TenantStatus::Active, reason.clone()).await?;
    let res = Json(tenant_json(&t)).into_response();
    Ok(with_reason(&s, res, &id, "tenant.resume", reason).await)
}

pub(super) async fn close_tenant(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<OptionalReason>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let reason = body.reason;
    let (t, already) = accounts::close(&s.deps, &id, reason.clone()).await?;
    let res = Json(tenant_json(&t)).into_response();
    if already {
        // The tenant keeps its first closing and reason: a repeat's reason is audited on
        // the platform chain as a repeat's, not as a second closing.
        return Ok(with_reason(&s, res, &id, "tenant.close_repeated", reason).await);
    }
    Ok(with_reason(&s, res, &id, "tenant.close", reason).await)
}

/// An operator's suspend, resume or close: the request's own event, on the tenant's
/// chain, says only whether a reason was given (the tenant's admins read that chain, and
/// the operator's reason is not theirs to read: README, openapi), and the platform chain
/// records the change itself, naming the tenant, with the reason (`null` when none was
/// given): every suspend, resume and close is there, with or without one.
async fn with_reason(
    s: &AppState,
    res: axum::response::Response,
    id: &crate::domain::TenantId,
    action: &str,
    reason: Option<String>,
) -> axum::response::Response {
    crate::service::audit::record_or_park(
        &s.deps,
        crate::service::audit::Draft {
            tenant: None,
            actor_type: "operator",
            actor_id: "platform".into(),
            action: action.into(),
            ip: None,
            outcome: crate::ports::AuditOutcome::Success,
            details: json!({"tenant_id": id.to_string(), "reason": reason}),
        },
    )
    .await;
    noted(res, Some(id), json!({"reason_given": reason.is_some()}))
}

pub(super) async fn put_tenant_throughput(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<crate::service::throttle::ThroughputBody>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let t = crate::service::throttle::set_throughput(&s.deps, &id, body).await?;
    let per_sec = crate::service::throttle::tier(&s.deps, &t);
    let res = Json(json!({"tenant_id": id, "throughput_per_sec": per_sec})).into_response();
    Ok(noted(res, Some(&id), json!({"per_sec": per_sec})))
}

/// `PUT /v1/platform/tenants/{id}/limits`: the tenant's per-key request limits.
pub(super) async fn put_tenant_limits(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<crate::service::limits::RequestLimits>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let t = crate::service::limits::set_tenant_limits(&s.deps, &id, body).await?;
    let limits = t.request_limits.unwrap_or(body);
    let tenant_wide = limits.tenant_wide();
    let res = Json(json!({
        "tenant_id": id,
        "requests_per_sec": limits.requests_per_sec,
        "burst": limits.burst,
        "tenant_requests_per_sec": tenant_wide.requests_per_sec,
        "tenant_burst": tenant_wide.burst,
    }))
    .into_response();
    Ok(noted(
        res,
        Some(&id),
        json!({"requests_per_sec": limits.requests_per_sec, "burst": limits.burst}),
    ))
}

/// `PUT /v1/platform/tenants/{id}/meta-token`: the tenant's Meta access token replaced
/// (`meta_token::replace`). Answers and audits when, never the token.
pub(super) async fn put_tenant_meta_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<crate::service::meta_token::NewMetaToken>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let at = crate::service::meta_token::replace(&s.deps, &id, body).await?;
    let res = Json(json!({"tenant_id": id, "meta_token_updated_at": at})).into_response();
    Ok(noted(res, Some(&id), json!({"meta_token_updated_at": at})))
}

pub(super) async fn put_tenant_allowlist(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AllowListBody>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let cidrs = accounts::set_ip_allowlist(&s.deps, &id, body).await?;
    let res = Json(json!({"tenant_id": id, "cidrs": cidrs})).into_response();
    Ok(noted(res, Some(&id), json!({"cidrs": cidrs})))
}

/// As stored: the access check's tenant may be a warm instance's copy of up to 5 s, and a
/// `PUT` answered by another instance would read back as the list it replaced.
pub(super) async fn get_allowlist(State(s): State<AppState>, ctx: TenantCtx) -> ApiResult {
    let tenant = s
        .deps
        .tenants
        .get_tenant(ctx.tenant_id())
        .await
        .map_err(crate::service::errors::ServiceError::from)?
        .unwrap_or(ctx.tenant);
    Ok(Json(json!({"cidrs": tenant.ip_allowlist})).into_response())
}

pub(super) async fn put_allowlist(
    State(s): State<AppState>,
    ctx: TenantCtx,
    JsonBody(body): JsonBody<AllowListBody>,
) -> ApiResult {
    let cidrs = accounts::set_ip_allowlist(&s.deps, ctx.tenant_id(), body).await?;
    let res = Json(json!({"cidrs": cidrs})).into_response();
    Ok(noted(res, None, json!({"cidrs": cidrs})))
}

/// `GET /v1/api-keys?limit=&cursor=`: a page of at most `limit` keys (default 100, the
/// most), newest first, and `next_cursor` (`null` on the last page).
pub(super) async fn list_keys(
    State(s): State<AppState>,
    ctx: TenantCtx,
    super::extract::Query(params): super::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult {
    let (limit, cursor) = super::page_query(&params, crate::ports::MAX_PAGE)?;
    let (keys, next_cursor) = apikeys::list(&s.deps, ctx.tenant_id(), limit, cursor).await?;
    Ok(Json(json!({"api_keys": keys, "next_cursor": next_cursor})).into_response())
}

fn minted_json(m: &apikeys::Minted) -> serde_json::Value {
    json!({
        "id": m.record.id,
        "key": m.key.expose(),
        "name": m.record.name,
        "role": m.record.role,
        "created_at": m.record.created_at,
        "expires_at": m.record.expires_at,
    })
}

pub(super) async fn create_key(
    State(s): State<AppState>,
    ctx: TenantCtx,
    JsonBody(req): JsonBody<NewKey>,
) -> ApiResult {
    let by = apikeys::creator(&s.deps, ctx.tenant_id(), &ctx.caller).await;
    let minted = apikeys::create(&s.deps, ctx.tenant_id(), req, by).await?;
    let res = (StatusCode::CREATED, Json(minted_json(&minted))).into_response();
    let details = json!({"key_id": minted.record.id, "role": minted.record.role});
    Ok(noted(res, None, details))
}

/// `POST /v1/platform/tenants/{id}/api-keys`: the operator mints a key for a tenant (a
/// tenant that lost or revoked every admin credential gets back in); audited on the
/// tenant's chain.
pub(super) async fn create_tenant_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NewKey>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let minted = apikeys::create_for_operator(&s.deps, &id, req).await?;
    let res = (StatusCode::CREATED, Json(minted_json(&minted))).into_response();
    let details = json!({"key_id": minted.record.id, "role": minted.record.role});
    Ok(noted(res, Some(&id), details))
}

pub(super) async fn rotate_key(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<Rotate>,
) -> ApiResult {
    let id = super::minted_path(&id)?;
    let by = apikeys::creator(&s.deps, ctx.tenant_id(), &ctx.caller).await;
    let (minted, old): (apikeys::Minted, KeyView) =
        apikeys::rotate(&s.deps, ctx.tenant_id(), id, req, by).await?;
    let mut body = minted_json(&minted);
    let details = json!({"key_id": id, "new_key_id": minted.record.id});
    body["previous"] = json!(old);
    Ok(noted(
        (StatusCode::CREATED, Json(body)).into_response(),
        None,
        details,
    ))
}

pub(super) async fn revoke_key(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    _: NoBody,
) -> Result<axum::response::Response, ApiError> {
    let id = super::minted_path(&id)?;
    apikeys::revoke(&s.deps, ctx.tenant_id(), id).await?;
    Ok(noted(
        empty(StatusCode::NO_CONTENT),
        None,
        json!({"key_id": id}),
    ))
}

/// `GET /v1/audit`: the tenant's chain, newest first.
pub(super) async fn list_audit(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    list_chain(&s, ctx.tenant_id().into(), &params).await
}

/// `GET /v1/platform/audit`: the platform chain (refused credentials, the operator's
/// reasons, the retention runs' reports…), as `GET /v1/audit` answers a tenant's.
pub(super) async fn list_platform_audit(
    State(s): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    list_chain(&s, audit::Chain::Platform, &params).await
}

/// A page of `chain`'s events: `since`, `until`, `action`, `limit` (1 to 100, 50) and
/// `cursor` (the `next_cursor` of the page before).
async fn list_chain(
    s: &AppState,
    chain: audit::Chain<'_>,
    params: &HashMap<String, String>,
) -> ApiResult {
    let mut q = AuditQuery {
        limit: 50,
        ..Default::default()
    };
    for (k, v) in params {
        match k.as_str() {
            "since" => q.since = Some(parse_time("since", v)?),
            "until" => q.until = Some(parse_time("until", v)?),
            "action" if !v.is_empty() && v.len() <= 200 => q.action = Some(v.clone()),
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| ApiError::invalid("limit must be 1 to 100"))?
            }
            "cursor" => {
                q.before_seq = Some(
                    v.parse::<u64>()
                        .map_err(|_| ApiError::invalid("invalid cursor"))?,
                )
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "invalid query parameter `{other}`"
                )))
            }
        }
    }
    super::window(q.since, q.until)?;
    let (events, next) = audit::list(&s.deps, chain, &q).await?;
    let next_cursor = next.map(|n| n.to_string());
    Ok(Json(json!({"events": events, "next_cursor": next_cursor})).into_response())
}

/// `GET /v1/audit/verify[?cursor=]`: a long chain is checked over several requests, each
/// answering the next one's cursor until `complete`.
pub(super) async fn verify_audit(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    verify_chain(&s, ctx.tenant_id().into(), &params).await
}

/// `GET /v1/platform/audit/verify[?cursor=]`: the platform chain, as `GET /v1/audit/verify`
/// checks a tenant's.
pub(super) async fn verify_platform_audit(
    State(s): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    verify_chain(&s, audit::Chain::Platform, &params).await
}

async fn verify_chain(
    s: &AppState,
    chain: audit::Chain<'_>,
    params: &HashMap<String, String>,
) -> ApiResult {
    let mut cursor = None;
    for (k, v) in params {
        match k.as_str() {
            "cursor" => cursor = Some(v.as_str()),
            other => {
                return Err(ApiError::invalid(format!(
                    "invalid query parameter `{other}`"
                )))
            }
        }
    }
    let report = audit::verify(&s.deps, chain, cursor).await?;
    Ok(Json(report).into_response())
}

/// `GET /v1/platform/dead-letters`: ids, kinds and counts of parked messages, no content.
pub(super) async fn list_dead_letters(
    State(s): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let mut queue = None;
    let mut limit = 50;
    for (k, v) in &params {
        match k.as_str() {
            "queue" => {
                queue = Some(QueueName::parse(v).ok_or_else(|| {
                    ApiError::invalid("queue must be dispatch or status_callback")
                })?)
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=deadletters::MAX_LIST).contains(l))
                    .ok_or_else(|| ApiError::invalid("limit must be 1 to 100"))?
            }
            other => return Err(ApiError::unknown_query_parameter(other)),
        }
    }
    let dead_letters = deadletters::list(&s.deps, queue, limit).await?;
    Ok(Json(json!({"dead_letters": dead_letters})).into_response())
}

/// `POST /v1/platform/dead-letters/redrive`: back to the source queue; audited with
/// counts only.
pub(super) async fn redrive_dead_letters(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<RedriveRequest>,
) -> ApiResult {
    let requested = req
        .ids
        .as_ref()
        .map_or(json!("all"), |ids| json!(ids.len()));
    let report = deadletters::redrive(&s.deps, req).await?;
    let details = json!({
        "queue": report.queue,
        "requested": requested,
        "redriven": report.redriven,
        "not_found": report.not_found.len(),
        "still_parked": report.still_parked.len(),
        "more": report.more,
    });
    Ok(noted(Json(report).into_response(), None, details))
}

/// Attaches what the audit trail should know about this call to its response.
pub(super) fn noted(
    mut res: axum::response::Response,
    tenant: Option<&crate::domain::TenantId>,
    details: serde_json::Value,
) -> axum::response::Response {
    res.extensions_mut().insert(AuditNote {
        tenant: tenant.cloned(),
        actor: None,
        details,
        maybe_tenant: None,
        outcome: None,
    });
    res
}
