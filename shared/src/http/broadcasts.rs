//! `/v1/broadcasts`: a JSON list of recipients, or a `text/csv` upload with a `phone`
//! column (the template then comes in the query: `template_name`, `template_language`,
//! `template_category` (optional), `template_components` (optional: the components as
//! URL-encoded JSON), `name`, `send_at` and `from` (optional)).

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::State;

use super::extract::{NoBody, Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream;
use serde_json::json;

use super::access::TenantCtx;
use super::admin::noted;
use super::error::ApiError;
use super::extract::parse_json;
use super::{ApiResult, AppState};
use crate::domain::MessageId;
use crate::ports::{BroadcastControl, BroadcastStatus};
use crate::service::broadcasts::{self, BroadcastRequest, CampaignIn};
use crate::service::send::TemplateIn;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/broadcasts", post(create).get(list))
        .route("/v1/broadcasts/{id}", get(get_one))
        .route("/v1/broadcasts/{id}/cancel", post(cancel))
        .route("/v1/broadcasts/{id}/pause", post(pause))
        .route("/v1/broadcasts/{id}/resume", post(resume))
        .route("/v1/broadcasts/{id}/retry-failed", post(retry_failed))
        .route("/v1/broadcasts/{id}/recipients.csv", get(recipients_csv))
}

fn template_from_query(q: &HashMap<String, String>) -> Result<TemplateIn, ApiError> {
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "template_name"
                | "template_language"
                | "template_category"
                | "template_components"
                | "name"
                | "send_at"
                | "from"
        ) {
            return Err(ApiError::unknown_query_parameter(k));
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
            // Exactly one of the names, as in a JSON body (no quoting, no other case).
            serde_json::from_value(serde_json::Value::String(c.clone())).map_err(|_| {
                ApiError::invalid("template_category must be marketing, utility or authentication")
            })
        })
        .transpose()?;
    // The template's components as a JSON body would carry them (a JSON array, URL-encoded):
    // a CSV upload can send a template whose body takes parameters.
    let components = match q.get("template_components") {
        Some(raw) if raw.chars().count() > MAX_COMPONENTS_PARAM => {
            return Err(ApiError::invalid(format!(
                "template_components may be at most {MAX_COMPONENTS_PARAM} characters"
            )))
        }
        Some(raw) => serde_json::from_str::<Vec<serde_json::Value>>(raw).map_err(|_| {
            ApiError::invalid(
                "template_components must be a JSON array of components, as `template.components` \
                 in a JSON body (URL-encoded)",
            )
        })?,
        None => Vec::new(),
    };
    Ok(TemplateIn {
        name: get("template_name")?,
        language: get("template_language")?,
        category,
        components,
    })
}

/// The longest `template_components` a CSV upload's query may carry, in characters as
/// openapi's `maxLength` counts them, decoded.
const MAX_COMPONENTS_PARAM: usize = 8192;

async fn create(
    State(s): State<AppState>,
    ctx: TenantCtx,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    super::extract::RawBody(body): super::extract::RawBody,
) -> ApiResult {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let key = super::idempotency::key_of(&headers)?;
    let (template, recipients, campaign) = if content_type.starts_with("text/csv") {
        let template = template_from_query(&q)?;
        // The upload as sent: its query (in order) and the SHA-256 of its bytes.
        let sorted: std::collections::BTreeMap<_, _> = q.iter().collect();
        let what = json!({"route": "broadcasts.csv", "query": sorted,
            "body_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body))});
        let campaign = CampaignIn {
            name: q.get("name").cloned(),
            send_at: q.get("send_at").map(|v| offset_plus(v)),
            from: q.get("from").cloned(),
            key: super::idempotency::keyed(key, &what),
            retry_of: None,
        };
        (template, broadcasts::recipients_from_csv(&body)?, campaign)
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
        let what = match &key {
            Some(_) => {
                let value: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|_| ApiError::invalid("malformed JSON"))?;
                json!({"route": "broadcasts", "body": value})
            }
            None => serde_json::Value::Null,
        };
        let campaign = CampaignIn {
            name: req.name,
            send_at: req.send_at,
            from: req.from,
            key: super::idempotency::keyed(key, &what),
            retry_of: None,
        };
        (req.template, req.recipients, campaign)
    };
    let accepted =
        broadcasts::create_campaign(&s.deps, ctx.tenant_id(), template, recipients, campaign)
            .await?;
    // (`status` in an event's details is the HTTP status: the middleware's.)
    let mut details = json!({"broadcast_id": accepted.id, "accepted": accepted.accepted,
        "broadcast_status": accepted.status});
    let replayed = accepted.replayed;
    let mut res = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    if replayed {
        super::idempotency::mark_replayed(&mut res);
        details["replayed"] = json!(true);
    }
    Ok(noted(res, None, details))
}

async fn list(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (mut status, mut limit, mut cursor) = (None, 50usize, None);
    for (k, v) in &q {
        match k.as_str() {
            "status" => {
                if !matches!(
                    v.as_str(),
                    "scheduled" | "sending" | "paused" | "completed" | "cancelled"
                ) {
                    return Err(ApiError::invalid(
                        "status must be scheduled, sending, paused, completed or cancelled",
                    ));
                }
                status = Some(v.clone());
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| ApiError::invalid("limit must be 1 to 100"))?
            }
            "cursor" => cursor = Some(v.clone()),
            other => return Err(ApiError::unknown_query_parameter(other)),
        }
    }
    let (views, next) = broadcasts::list(
        &s.deps,
        ctx.tenant_id(),
        status.as_deref(),
        limit,
        cursor.as_deref(),
    )
    .await?;
    Ok(Json(json!({"broadcasts": views, "next_cursor": next})).into_response())
}

/// The optional body of `retry-failed`: the template's components again (Kirim keeps no
/// message content, so it cannot reuse the first send's parameters).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    #[serde(default)]
    components: Vec<serde_json::Value>,
}

async fn retry_failed(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    headers: HeaderMap,
    super::extract::RawBody(body): super::extract::RawBody,
) -> ApiResult {
    super::minted_path(&id)?;
    let key = super::idempotency::key_of(&headers)?;
    let req: RetryRequest = if body.is_empty() {
        RetryRequest::default()
    } else {
        parse_json(&body)?
    };
    let what = json!({"route": "retry-failed", "id": id, "components": req.components});
    let key = super::idempotency::keyed(key, &what);
    let retried =
        broadcasts::retry_failed(&s.deps, ctx.tenant_id(), &id, req.components, key).await?;
    let mut details = json!({"broadcast_id": retried.id, "retry_of": retried.retry_of,
        "accepted": retried.accepted});
    let replayed = retried.replayed;
    let mut res = (StatusCode::ACCEPTED, Json(retried)).into_response();
    if replayed {
        super::idempotency::mark_replayed(&mut res);
        details["replayed"] = json!(true);
    }
    Ok(noted(res, None, details))
}

/// Where the CSV stream stands.
enum CsvStep {
    Header,
    Messages(Option<MessageId>),
    Pending,
    Done,
}

/// `recipients.csv`: the header, then the broadcast's messages page by page (one page in
/// memory at a time), then recipients it has not reached yet (a scheduled broadcast's
/// list). The first page is read before the answer's status is chosen (a storage error
/// then is a `503`, not a `200` with a header alone); one after the body began aborts it
/// (the transfer is cut off, on Lambda the invocation fails: a `5xx`), so a complete file
/// is never mistaken for a truncated one.
async fn recipients_csv(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
) -> ApiResult {
    super::minted_path(&id)?;
    let deps = s.deps.clone();
    let b = deps
        .broadcasts
        .get_broadcast(ctx.tenant_id(), &id)
        .await
        .map_err(crate::service::errors::ServiceError::from)?
        .ok_or_else(ApiError::not_found)?;
    // The recipients the broadcast had not reached yet, read before the walk: the fan-out
    // goes on meanwhile, and records messages the walk may have passed already (their ids
    // are not in recipient order), and deletes the list once it is done; read after the
    // walk, those recipients would be in neither part.
    let pending = if b.enqueued < b.accepted {
        deps.broadcasts
            .broadcast_recipients(&b.tenant_id, &b.id)
            .await
            .map_err(crate::service::errors::ServiceError::from)?
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let pending = std::sync::Arc::new(pending);
    let first = deps
        .broadcasts
        .broadcast_messages(&b, broadcasts::PAGE, None)
        .await
        .map_err(crate::service::errors::ServiceError::from)?;
    // The ids of the messages written out: a recipient whose message was recorded while
    // the walk went on is then not listed again as pending.
    let start = (
        CsvStep::Header,
        std::collections::HashSet::<MessageId>::new(),
        Some(first),
    );
    // The body is read after the handler returned, outside its request span: the request
    // id goes with the stream for its error line.
    let request_id = crate::telemetry::request_id();
    let body = stream::unfold(start, move |(step, mut emitted, mut first)| {
        let deps = deps.clone();
        let b = b.clone();
        let pending = pending.clone();
        let request_id = request_id.clone();
        async move {
            let (text, next) = match step {
                CsvStep::Done => return None,
                CsvStep::Header => (broadcasts::CSV_HEADER.to_owned(), CsvStep::Messages(None)),
                CsvStep::Messages(after) => {
                    let page = match first.take() {
                        Some(read) => Ok(read),
                        None => {
                            deps.broadcasts
                                .broadcast_messages(&b, broadcasts::PAGE, after.as_ref())
                                .await
                        }
                    };
                    match page {
                        Ok((page, next)) => (
                            page.iter()
                                .map(|m| {
                                    emitted.insert(m.id.clone());
                                    broadcasts::csv_row(m)
                                })
                                .collect::<String>(),
                            match next {
                                Some(n) => CsvStep::Messages(Some(n)),
                                None => CsvStep::Pending,
                            },
                        ),
                        Err(e) => {
                            tracing::error!(request_id = request_id.as_deref(), broadcast_id = %b.id, error = %e, "recipients.csv stopped");
                            let cut =
                                std::io::Error::other("storage error: recipients.csv cut off");
                            return Some((Err(cut), (CsvStep::Done, emitted, None)));
                        }
                    }
                }
                CsvStep::Pending => {
                    // A cancelled broadcast's never-queued recipients are recorded
                    // `cancelled` (refunded) by its fan-out, never sent.
                    let status = if b.status == BroadcastStatus::Cancelled
                        || b.control == Some(BroadcastControl::Cancelled)
                    {
                        "cancelled"
                    } else if b.status == BroadcastStatus::Scheduled {
                        "scheduled"
                    } else {
                        "accepted"
                    };
                    // Those the broadcast had not reached when the request came, less
                    // any whose message the walk above wrote out.
                    let rows = pending
                        .iter()
                        .enumerate()
                        .skip(b.enqueued)
                        .filter(|(i, _)| !emitted.contains(&broadcasts::message_id(&b, *i)))
                        .map(|(_, p)| broadcasts::csv_pending_row(p, status))
                        .collect::<String>();
                    (rows, CsvStep::Done)
                }
            };
            Some((Ok(Bytes::from(text)), (next, emitted, first)))
        }
    });
    let disposition = format!("attachment; filename=\"broadcast-{id}-recipients.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

async fn cancel(s: State<AppState>, ctx: TenantCtx, id: Path<String>, _: NoBody) -> ApiResult {
    moved(s, ctx, id, Move::Cancel).await
}

async fn pause(s: State<AppState>, ctx: TenantCtx, id: Path<String>, _: NoBody) -> ApiResult {
    moved(s, ctx, id, Move::Pause).await
}

async fn resume(s: State<AppState>, ctx: TenantCtx, id: Path<String>, _: NoBody) -> ApiResult {
    moved(s, ctx, id, Move::Resume).await
}

enum Move {
    Pause,
    Resume,
    Cancel,
}

/// Pause, resume or cancel: `200` with the broadcast as it is now.
async fn moved(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    what: Move,
) -> ApiResult {
    super::minted_path(&id)?;
    let (d, t) = (&s.deps, ctx.tenant_id());
    let view = match what {
        Move::Pause => broadcasts::pause(d, t, &id).await?,
        Move::Resume => broadcasts::resume(d, t, &id).await?,
        Move::Cancel => broadcasts::cancel(d, t, &id).await?,
    };
    let details = json!({"broadcast_id": view.id, "broadcast_status": view.status});
    Ok(noted(Json(view).into_response(), None, details))
}

async fn get_one(State(s): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult {
    super::minted_path(&id)?;
    let view = broadcasts::view(&s.deps, ctx.tenant_id(), &id).await?;
    Ok(Json(view).into_response())
}

/// A `send_at` from a query string, where an unencoded `+` of its offset
/// (`2026-12-01T09:00:00+08:00`) arrives decoded as a space: the space before a closing
/// `hh:mm` is that `+` again. (`%2B08:00` and `Z` arrive as they are.)
pub(crate) fn offset_plus(v: &str) -> String {
    let b = v.as_bytes();
    let n = b.len();
    let offset = n >= 6
        && b[n - 6] == b' '
        && b[n - 5].is_ascii_digit()
        && b[n - 4].is_ascii_digit()
        && b[n - 3] == b':'
        && b[n - 2].is_ascii_digit()
        && b[n - 1].is_ascii_digit();
    if offset {
        format!("{}+{}", &v[..n - 6], &v[n - 5..])
    } else {
        v.to_owned()
    }
}

#[cfg(test)]
mod offset_tests {
    #[test]
    fn a_query_s_offset_plus_decoded_as_a_space_is_read_as_plus() {
        assert_eq!(
            super::offset_plus("2026-12-01T09:00:00 08:00"),
            "2026-12-01T09:00:00+08:00"
        );
        for same in [
            "2026-12-01T09:00:00+08:00",
            "2026-12-01T09:00:00Z",
            "2026-12-01T09:00:00-05:00",
            "tomorrow",
            "",
            " 8:00",
        ] {
            assert_eq!(super::offset_plus(same), same);
        }
    }
}

#[cfg(test)]
mod query_tests {
    use std::collections::HashMap;

    fn query(components: String) -> HashMap<String, String> {
        HashMap::from([
            ("template_name".to_owned(), "promo_sale".to_owned()),
            ("template_language".to_owned(), "en_US".to_owned()),
            ("template_components".to_owned(), components),
        ])
    }

    /// openapi's `maxLength` holds, counted in characters as JSON Schema counts them: a
    /// longer `template_components` is refused, not read; Thai text at the limit (three
    /// bytes a character) is taken.
    #[test]
    fn template_components_longer_than_8192_characters_are_refused() {
        let param = |n: usize| {
            let text = "ก".repeat(n);
            format!(r#"[{{"type":"body","parameters":[{{"type":"text","text":"{text}"}}]}}]"#)
        };
        let fits = param(super::MAX_COMPONENTS_PARAM - param(0).chars().count());
        assert_eq!(fits.chars().count(), super::MAX_COMPONENTS_PARAM);
        assert!(fits.len() > super::MAX_COMPONENTS_PARAM);
        assert!(super::template_from_query(&query(fits.clone())).is_ok());
        let over = param(super::MAX_COMPONENTS_PARAM + 1 - param(0).chars().count());
        assert!(super::template_from_query(&query(over)).is_err());
    }
}
