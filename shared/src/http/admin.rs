//! Administration handlers: the platform operator's tenant management, and a tenant
//! admin's API keys and settings. Access is checked by `access::authorize` beforehand.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::access::TenantCtx;
use super::error::{empty, ApiError};
use super::extract::{JsonBody, OptionalJsonBody};
use super::{tenant_path, views, ApiResult, AppState};
use crate::ports::TenantStatus;
use crate::service::accounts::{self, AllowListBody, OptionalReason, StatusChangeRequest};
use crate::service::apikeys::{self, KeyView, NewKey, Rotate};

fn tenant_json(t: &crate::ports::Tenant) -> serde_json::Value {
    json!({"tenant": views::TenantView::from(t), "status_reason": t.status_reason})
}

pub(super) async fn suspend_tenant(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<StatusChangeRequest>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let t = accounts::set_status(&s.deps, &id, TenantStatus::Suspended, Some(req.reason)).await?;
    Ok(Json(tenant_json(&t)).into_response())
}

pub(super) async fn resume_tenant(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<OptionalReason>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let reason = body.reason;
    let t = accounts::set_status(&s.deps, &id, TenantStatus::Active, reason).await?;
    Ok(Json(tenant_json(&t)).into_response())
}

pub(super) async fn close_tenant(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<OptionalReason>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let reason = body.reason;
    let t = accounts::close(&s.deps, &id, reason).await?;
    Ok(Json(tenant_json(&t)).into_response())
}

pub(super) async fn put_tenant_allowlist(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AllowListBody>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let cidrs = accounts::set_ip_allowlist(&s.deps, &id, body).await?;
    Ok(Json(json!({"tenant_id": id, "cidrs": cidrs})).into_response())
}

pub(super) async fn get_allowlist(ctx: TenantCtx) -> ApiResult {
    Ok(Json(json!({"cidrs": ctx.tenant.ip_allowlist})).into_response())
}

pub(super) async fn put_allowlist(
    State(s): State<AppState>,
    ctx: TenantCtx,
    JsonBody(body): JsonBody<AllowListBody>,
) -> ApiResult {
    let cidrs = accounts::set_ip_allowlist(&s.deps, ctx.tenant_id(), body).await?;
    Ok(Json(json!({"cidrs": cidrs})).into_response())
}

pub(super) async fn list_keys(State(s): State<AppState>, ctx: TenantCtx) -> ApiResult {
    let keys = apikeys::list(&s.deps, ctx.tenant_id()).await?;
    Ok(Json(json!({"api_keys": keys})).into_response())
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
    let minted = apikeys::create(&s.deps, ctx.tenant_id(), req).await?;
    Ok((StatusCode::CREATED, Json(minted_json(&minted))).into_response())
}

pub(super) async fn rotate_key(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<Rotate>,
) -> ApiResult {
    let (minted, old): (apikeys::Minted, KeyView) =
        apikeys::rotate(&s.deps, ctx.tenant_id(), &id, req).await?;
    let mut body = minted_json(&minted);
    body["previous"] = json!(old);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) async fn revoke_key(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    apikeys::revoke(&s.deps, ctx.tenant_id(), &id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
