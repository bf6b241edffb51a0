//! `/v1/opt-outs`: list and read (read_only), add (operator), remove (admin); the roles
//! are enforced by the access table (`http::access::ROUTES`).
//! `{key}` is a phone in E.164 with `+` (also accepted percent-encoded, `%2B60123456789`)
//! or Meta's business-scoped user id (`US.13491208655302741918`).

use std::collections::HashMap;

use axum::extract::State;

use super::extract::{NoBody, Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::access::TenantCtx;
use super::error::empty;
use super::extract::parse_json;
use super::{ApiResult, AppState};
use crate::domain::{OptOut, OptOutKey, OptOutScope, OptOutSource};
use crate::service::optouts;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/opt-outs", get(list)).route(
        "/v1/opt-outs/{key}",
        get(get_one).put(put_one).delete(delete_one),
    )
}

/// What leaves the system about an opt-out. Never inbound text (none is kept).
#[derive(Serialize, Debug)]
pub struct OptOutView {
    /// The key it is kept under, which `GET` and `DELETE /v1/opt-outs/{key}` take: its
    /// phone, or its user id for one known only by id and for the copy kept under the user
    /// id Meta named with the phone.
    pub key: String,
    /// `null` for a user known only by id.
    pub phone: Option<String>,
    /// Meta's business-scoped user id, when known (`null` otherwise).
    pub user_id: Option<String>,
    pub scope: OptOutScope,
    pub source: OptOutSource,
    /// The API key id that added it, or `meta`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl OptOutView {
    /// The view of `o` as kept under `key`.
    pub fn kept_under(o: &OptOut, key: &OptOutKey) -> Self {
        Self {
            key: key.to_string(),
            ..Self::from(o)
        }
    }
}

impl From<&OptOut> for OptOutView {
    fn from(o: &OptOut) -> Self {
        Self {
            key: o.key().map(|k| k.to_string()).unwrap_or_default(),
            phone: o.phone.as_ref().map(ToString::to_string),
            user_id: o.user_id.as_ref().map(ToString::to_string),
            scope: o.scope,
            source: o.source,
            created_by: o.created_by.clone(),
            created_at: o.created_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    scope: Option<OptOutScope>,
}

async fn list(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let tenant = ctx.tenant_id();
    let (limit, cursor) = super::page_query(&params, 50)?;
    let page = optouts::list(&s.deps, tenant, limit, cursor).await?;
    let items: Vec<OptOutView> = page
        .opt_outs
        .iter()
        .zip(&page.keys)
        .map(|(o, k)| OptOutView::kept_under(o, k))
        .collect();
    Ok(Json(json!({"opt_outs": items, "next_cursor": page.next_cursor})).into_response())
}

async fn get_one(State(s): State<AppState>, ctx: TenantCtx, Path(key): Path<String>) -> ApiResult {
    let tenant = ctx.tenant_id();
    let key = optouts::parse_existing_key(&key)?;
    // The key it is kept under, which may be another form of the one asked for, or the
    // one paired with it.
    let (o, kept) = optouts::get(&s.deps, tenant, &key).await?;
    Ok(Json(OptOutView::kept_under(&o, &kept)).into_response())
}

async fn put_one(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(key): Path<String>,
    super::extract::RawBody(body): super::extract::RawBody,
) -> ApiResult {
    let tenant = ctx.tenant_id();
    let key = optouts::parse_key(&key)?;
    let scope = if body.iter().all(u8::is_ascii_whitespace) {
        OptOutScope::All
    } else {
        parse_json::<PutBody>(&body)?
            .scope
            .unwrap_or(OptOutScope::All)
    };
    let (_, by) = ctx.caller.actor();
    let who = optouts::Recipient::of(key.clone());
    let o = optouts::add(&s.deps, tenant, who, scope, OptOutSource::Api, &by, None).await?;
    // The audit trail names whose opt-out it was (masked, as a send's `to`) and its scope.
    let details = json!({"key": key.masked(), "scope": o.scope});
    let res = Json(OptOutView::kept_under(&o, &key)).into_response();
    Ok(super::admin::noted(res, None, details))
}

async fn delete_one(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(key): Path<String>,
    _: NoBody,
) -> ApiResult {
    let tenant = ctx.tenant_id();
    let key = optouts::parse_existing_key(&key)?;
    optouts::remove(&s.deps, tenant, &key).await?;
    // The audit trail names whose opt-out was lifted (masked).
    let details = json!({"key": key.masked()});
    Ok(super::admin::noted(
        empty(StatusCode::NO_CONTENT),
        None,
        details,
    ))
}
