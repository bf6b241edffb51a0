//! `/v1/broadcasts`: a JSON list of recipients, or a `text/csv` upload with a `phone`
//! column (the template then comes in the query: `template_name`, `template_language`,
//! `template_category` (optional), and `from` (optional); CSV broadcasts carry no template components, so they
//! send templates whose body takes no parameters).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::access::TenantCtx;
use super::admin::noted;
use super::error::ApiError;
use super::extract::parse_json;
use super::{ApiResult, AppState};
use crate::service::broadcasts::{self, BroadcastRequest};
use crate::service::send::TemplateIn;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/broadcasts", post(create))
        .route("/v1/broadcasts/{id}", get(get_one))
}

fn template_from_query(q: &HashMap<String, String>) -> Result<TemplateIn, ApiError> {
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "template_name" | "template_language" | "template_category" | "from"
        ) {
            return Err(ApiError::invalid(format!("unknown query parameter `{k}`")));
        }
    }
    let get = |k: &str| {
        q.get(k).cloned().ok_or_else(|| {
            ApiError::invalid(format!("a CSV upload needs the `{k}` query parameter"))
        })
    };
    // Optional, as in a JSON body: the catalogue decides; given, it must agree.
    let category = q
        .get("template_category")
        .map(|c| {
            parse_json(format!("\"{}\"", c.replace('"', "")).as_bytes()).map_err(|_| {
                ApiError::invalid("template_category must be marketing, utility or authentication")
            })
        })
        .transpose()?;
    Ok(TemplateIn {
        name: get("template_name")?,
        language: get("template_language")?,
        category,
        components: Vec::new(),
    })
}

async fn create(
    State(s): State<AppState>,
    ctx: TenantCtx,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let (template, recipients, from) = if content_type.starts_with("text/csv") {
        let template = template_from_query(&q)?;
        (
            template,
            broadcasts::recipients_from_csv(&body)?,
            q.get("from").cloned(),
        )
    } else {
        if !q.is_empty() {
            return Err(ApiError::invalid(
                "query parameters are for CSV uploads; send the template in the JSON body",
            ));
        }
        if body.is_empty() {
            return Err(ApiError::invalid("a JSON body is required"));
        }
        let req: BroadcastRequest = parse_json(&body)?;
        (req.template, req.recipients, req.from)
    };
    let accepted = broadcasts::create(&s.deps, ctx.tenant_id(), template, recipients, from).await?;
    let details = json!({"broadcast_id": accepted.id, "accepted": accepted.accepted});
    let res = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    Ok(noted(res, None, details))
}

async fn get_one(State(s): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult {
    if ulid::Ulid::from_string(&id).is_err() {
        return Err(ApiError::not_found());
    }
    let view = broadcasts::view(&s.deps, ctx.tenant_id(), &id).await?;
    Ok(Json(view).into_response())
}
