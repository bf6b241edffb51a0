//! A tenant's phone numbers (the operator adds and removes them, `GET /v1/phone-numbers`,
//! an admin picks the default) and Meta's pricing per day (`GET /v1/usage`). Roles are
//! enforced by the access table (`http::access::ROUTES`).

use std::collections::HashMap;

use axum::extract::State;

use super::extract::{NoBody, Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::json;

use super::access::TenantCtx;
use super::admin::noted;
use super::error::{empty, ApiError};
use super::extract::JsonBody;
use super::{tenant_path, ApiResult, AppState};
use crate::service::numbers::{self, NewNumber};
use crate::service::usage;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/platform/tenants/{id}/phone-numbers", post(add))
        .route(
            "/v1/platform/tenants/{id}/phone-numbers/{phone_number_id}",
            delete(remove),
        )
        .route("/v1/phone-numbers", get(list))
        .route(
            "/v1/phone-numbers/{phone_number_id}/default",
            put(set_default),
        )
        .route("/v1/phone-numbers/{phone_number_id}/resume", post(resume))
        .route("/v1/usage", get(get_usage))
}

async fn add(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NewNumber>,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let added = numbers::add_number(&s.deps, &id, req).await?;
    let n = &added.number;
    let body = json!({
        "tenant_id": id,
        "phone_number_id": n.phone_number_id,
        "waba_id": n.waba_id,
        "display_phone_number": n.display_phone_number,
    });
    let mut details = json!({"phone_number_id": n.phone_number_id, "waba_id": n.waba_id});
    // A number taken over from a closed tenant: which one (ids only).
    if let Some(closed) = &added.taken_from {
        details["phone_number_taken_from"] = json!(closed);
    }
    let res = (StatusCode::CREATED, Json(body)).into_response();
    Ok(noted(res, Some(&id), details))
}

async fn remove(
    State(s): State<AppState>,
    Path((id, phone_number_id)): Path<(String, String)>,
    _: NoBody,
) -> ApiResult {
    let id = tenant_path(&id)?;
    let phone_number_id = super::number_path(&phone_number_id)?;
    numbers::remove(&s.deps, &id, phone_number_id).await?;
    Ok(noted(
        empty(StatusCode::NO_CONTENT),
        Some(&id),
        json!({"phone_number_id": phone_number_id}),
    ))
}

async fn list(State(s): State<AppState>, ctx: TenantCtx) -> ApiResult {
    let views = numbers::list(&s.deps, &ctx.tenant).await?;
    Ok(Json(json!({"phone_numbers": views})).into_response())
}

async fn set_default(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(phone_number_id): Path<String>,
    _: NoBody,
) -> ApiResult {
    let phone_number_id = super::number_path(&phone_number_id)?;
    let n = numbers::set_default(&s.deps, &ctx.tenant, phone_number_id).await?;
    let body = json!({"phone_number_id": n.phone_number_id, "waba_id": n.waba_id, "default": true});
    Ok(noted(
        Json(body).into_response(),
        None,
        json!({"phone_number_id": n.phone_number_id}),
    ))
}

async fn resume(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(phone_number_id): Path<String>,
    _: NoBody,
) -> ApiResult {
    let phone_number_id = super::number_path(&phone_number_id)?;
    let (n, resumed) = numbers::resume(&s.deps, &ctx.tenant, phone_number_id).await?;
    let details = json!({"phone_number_id": n.phone_number_id, "resumed": resumed});
    Ok(noted(Json(n).into_response(), None, details))
}

async fn get_usage(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    if let Some(other) = params.keys().find(|k| !matches!(k.as_str(), "from" | "to")) {
        return Err(ApiError::unknown_query_parameter(other));
    }
    let (from, to) = usage::range(
        params.get("from").map(String::as_str),
        params.get("to").map(String::as_str),
    )?;
    let rows = usage::usage(&s.deps, ctx.tenant_id(), from, to).await?;
    Ok(Json(json!({"usage": rows})).into_response())
}
