//! `/v1/settings/status-callback` (admin): where status changes are POSTed, and the
//! write-only secret they are signed with (service::callbacks).

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::access::TenantCtx;
use super::admin::noted;
use super::extract::{JsonBody, NoBody};
use super::{ApiResult, AppState};
use crate::service::callbacks::{self, CallbackUpdate};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/settings/status-callback",
            get(get_setting).put(put_setting).delete(delete_setting),
        )
        .route("/v1/settings/status-callback/failures", get(list_failures))
}

/// `GET /v1/settings/status-callback/failures?limit=&cursor=`: the tenant's callbacks given
/// up in the last 14 days, newest first, a page of at most `limit` (default 100, the most),
/// and `next_cursor` (`null` on the last page). As `GET /v1/api-keys` pages.
async fn list_failures(
    State(s): State<AppState>,
    ctx: TenantCtx,
    super::extract::Query(params): super::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult {
    let (limit, cursor) = super::page_query(&params, crate::ports::MAX_PAGE)?;
    let (data, next_cursor) = callbacks::failures(&s.deps, ctx.tenant_id(), limit, cursor).await?;
    Ok(Json(json!({"data": data, "next_cursor": next_cursor})).into_response())
}

async fn get_setting(State(s): State<AppState>, ctx: TenantCtx) -> ApiResult {
    let view = callbacks::get_setting(&s.deps, ctx.tenant_id()).await?;
    Ok(Json(view).into_response())
}

async fn put_setting(
    State(s): State<AppState>,
    ctx: TenantCtx,
    JsonBody(update): JsonBody<CallbackUpdate>,
) -> ApiResult {
    let view = callbacks::put_setting(&s.deps, ctx.tenant_id(), update).await?;
    // The audit trail learns the URL's host and its SHA-256, never the secret, nor the
    // URL's path and query (a webhook relay's URL often carries its own token there, and
    // the trail keeps it 2 years, unchangeable): the hash tells which URL it was to one
    // who has it.
    let details = match view.url.as_deref() {
        Some(url) => json!({
            "url_host": url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)),
            "url_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(url.as_bytes())),
        }),
        None => json!({"url": null}),
    };
    Ok(noted(Json(view).into_response(), None, details))
}

async fn delete_setting(State(s): State<AppState>, ctx: TenantCtx, _: NoBody) -> ApiResult {
    let off = CallbackUpdate {
        url: None,
        secret: None,
    };
    let view = callbacks::put_setting(&s.deps, ctx.tenant_id(), off).await?;
    Ok(noted(
        Json(view).into_response(),
        None,
        json!({"url": null}),
    ))
}
