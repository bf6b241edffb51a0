//! `/v1/templates`: the tenant's template catalogue (read_only) and its sync from Meta
//! (admin); the roles are enforced by the access table (`http::access::ROUTES`).

use std::collections::HashMap;

use axum::extract::State;

use super::extract::{NoBody, Query};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::access::TenantCtx;
use super::error::ApiError;
use super::{ApiResult, AppState};
use crate::domain::{TemplateCategory, TemplateStatus};
use crate::ports::TemplateQuery;
use crate::service::templates;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/templates", get(list))
        .route("/v1/templates/sync", post(sync))
}

async fn list(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let mut q = TemplateQuery {
        limit: 50,
        ..Default::default()
    };
    let mut waba = ctx.tenant.waba_id.clone();
    for (k, v) in &params {
        match k.as_str() {
            "waba_id" => {
                let ours = crate::service::numbers::wabas(&s.deps, &ctx.tenant).await?;
                if !ours.contains(v) {
                    return Err(ApiError::invalid(
                        "waba_id must be the WABA of one of this account's phone numbers",
                    ));
                }
                waba = v.clone();
            }
            "status" => {
                q.status = Some(TemplateStatus::parse(v).ok_or_else(|| {
                    ApiError::invalid(
                        "status must be approved, pending, rejected, paused, disabled or archived",
                    )
                })?)
            }
            "category" => {
                q.category = Some(
                    TemplateCategory::from_meta(v)
                        .filter(|c| c.as_str() == v)
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "category must be marketing, utility or authentication",
                            )
                        })?,
                )
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| ApiError::invalid("limit must be 1 to 100"))?
            }
            "cursor" => {
                q.after = Some(
                    templates::parse_cursor(v)
                        .ok_or_else(|| ApiError::invalid("invalid cursor"))?,
                )
            }
            other => return Err(ApiError::unknown_query_parameter(other)),
        }
    }
    let (views, next_cursor) = templates::list(&s.deps, &waba, &q).await?;
    Ok(Json(json!({"templates": views, "next_cursor": next_cursor})).into_response())
}

async fn sync(State(s): State<AppState>, ctx: TenantCtx, _: NoBody) -> ApiResult {
    // Every WABA the tenant's numbers sit on.
    let wabas = crate::service::numbers::wabas(&s.deps, &ctx.tenant).await?;
    let synced =
        templates::sync_all_within(&s.deps, &ctx.tenant, &wabas, templates::REQUEST_SYNC_TIME)
            .await?;
    let res = Json(synced).into_response();
    Ok(super::admin::noted(
        res,
        None,
        json!({"synced": synced.synced, "removed": synced.removed}),
    ))
}
