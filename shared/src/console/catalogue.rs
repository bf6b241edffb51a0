//! The templates page: the tenant's catalogue as Kirim knows it from Meta
//! (`GET /v1/templates`, filtered and paged) and, for admins, "Sync with Meta"
//! (`POST /v1/templates/sync`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use serde_json::Value;

use super::api::Answer;
use super::pages::{done, failed, form, problem, query, text, when, Ctx};
use super::views::{csrf, frame, page, Notice};
use super::ConsoleState;

pub(super) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console/templates", get(templates))
        .route("/console/templates/sync", post(sync))
}

const STATUSES: [&str; 6] = [
    "approved", "pending", "rejected", "paused", "disabled", "archived",
];
const CATEGORIES: [&str; 3] = ["marketing", "utility", "authentication"];

async fn templates(
    State(s): State<ConsoleState>,
    ctx: Ctx,
    q: Query<HashMap<String, String>>,
) -> Response {
    render(&s, &ctx, &q.0, StatusCode::OK, done(&q.0)).await
}

async fn render(
    s: &ConsoleState,
    ctx: &Ctx,
    q: &HashMap<String, String>,
    status: StatusCode,
    n: Option<Notice>,
) -> Response {
    let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let (st, category, cursor) = (get("status"), get("category"), get("cursor"));
    let wabas: Vec<String> = super::senders::Senders::read(s, ctx)
        .await
        .wabas()
        .into_iter()
        .map(str::to_owned)
        .collect();
    // Which account's catalogue (empty: the default number's); offered with several.
    let waba = get("waba_id");
    let qs = query(&[
        ("waba_id", &waba),
        ("status", &st),
        ("category", &category),
        ("limit", "50"),
        ("cursor", &cursor),
    ]);
    let a = s.api.get(&ctx.who, &format!("/v1/templates?{qs}")).await;
    let (mut status, mut n) = (status, n);
    let mut list: Vec<Value> = Vec::new();
    let mut next = None;
    if a.status == StatusCode::BAD_REQUEST {
        (status, n) = problem(&a);
    } else if !a.ok() {
        return failed(&a);
    } else {
        list = a.body["templates"].as_array().cloned().unwrap_or_default();
        next = a.body["next_cursor"].as_str().map(str::to_owned);
    }
    let body = html! {
        p.hint { "The message templates Meta has for your account, as Kirim last read them.
            Only approved templates can be sent." }
        @if ctx.may("POST", "/v1/templates/sync") {
            form.filters method="post" action="/console/templates/sync" {
                (csrf(&ctx.csrf))
                button #sync type="submit" { "Sync with Meta" }
                span.hint { " Reads every template from Meta now (it also happens daily)." }
            }
        }
        form.filters method="get" action="/console/templates" {
            @if wabas.len() > 1 {
                div {
                    label for="t-waba" { "WhatsApp Business Account" }
                    select #t-waba name="waba_id" {
                        option value="" selected[waba.is_empty()] { "the default number's" }
                        @for w in &wabas { option value=(w) selected[&waba == w] { (w) } }
                    }
                }
            }
            div {
                label for="t-status" { "Status" }
                select #t-status name="status" {
                    option value="" selected[st.is_empty()] { "Any" }
                    @for x in STATUSES { option value=(x) selected[st == x] { (x) } }
                }
            }
            div {
                label for="t-category" { "Category" }
                select #t-category name="category" {
                    option value="" selected[category.is_empty()] { "Any" }
                    @for x in CATEGORIES { option value=(x) selected[category == x] { (x) } }
                }
            }
            button type="submit" { "Filter" }
        }
        div.table-wrap {
            table.stack #templates {
                caption { "Templates" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Language" } th scope="col" { "Category" }
                    th scope="col" { "Status" } th scope="col" { "Quality" } th scope="col" { "Body parameters" }
                    th scope="col" { "Updated" }
                } }
                tbody {
                    @for t in &list {
                        tr {
                            td data-label="Name" { (text(t, "name")) } td data-label="Language" { (text(t, "language")) } td data-label="Category" { (text(t, "category")) }
                            td.status data-label="Status" { (text(t, "status")) } td data-label="Quality" { (text(t, "quality")) }
                            td data-label="Body parameters" { (t["body_parameters"].as_u64().unwrap_or(0)) } td data-label="Updated" { (when(&t["updated_at"])) }
                        }
                    }
                    @if list.is_empty() { tr { td colspan="7" { "No templates." } } }
                }
            }
        }
        @if let Some(c) = &next {
            p { a href=(format!("/console/templates?{}", query(&[("waba_id", &waba), ("status", &st), ("category", &category), ("cursor", c)]))) { "More templates" } }
        }
    };
    page(
        status,
        frame(
            "Templates",
            &ctx.chrome("/console/templates"),
            n.as_ref(),
            body,
        ),
    )
}

/// What a sync's answer means for a person.
fn synced(a: &Answer) -> (StatusCode, Notice) {
    if a.ok() {
        let count = |k: &str| a.body[k].as_u64().unwrap_or(0);
        return (
            StatusCode::OK,
            Notice::Done(format!(
                "Synced with Meta: {} templates read, {} removed that Meta no longer has.",
                count("synced"),
                count("removed")
            )),
        );
    }
    if a.status == StatusCode::BAD_GATEWAY {
        // The API's words name the cause (an expired token, a missing permission, a sync cut
        // short whose reads were kept), written for a person; without them, a general line.
        let why = a.body["error"]["message"]
            .as_str()
            .filter(|m| !m.is_empty())
            .map(|m| format!("Meta's answer stopped the sync: {m}."))
            .unwrap_or_else(|| {
                "Meta did not answer properly; the catalogue below is what Kirim has read. \
                 Try again in a few minutes."
                    .into()
            });
        return (StatusCode::BAD_GATEWAY, Notice::Problem(why));
    }
    let (status, n) = problem(a);
    (status, n.unwrap_or_else(|| Notice::Problem(a.message())))
}

async fn sync(State(s): State<ConsoleState>, ctx: Ctx, body: Bytes) -> Response {
    if let Err(r) = form(&s, &ctx, &body).await {
        return r;
    }
    let a = s
        .api
        .call(&ctx.who, Method::POST, "/v1/templates/sync", None, None)
        .await;
    if matches!(a.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return failed(&a);
    }
    let (status, n) = synced(&a);
    render(&s, &ctx, &HashMap::new(), status, Some(n)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: StatusCode, body: serde_json::Value) -> Answer {
        Answer {
            status,
            body,
            retry_after: None,
        }
    }

    /// A sync Meta stopped says why, as the API does (an expired token is not fixed by
    /// trying again in a few minutes); with no reason given, a general line.
    #[test]
    fn a_sync_meta_stopped_shows_the_apis_reason() {
        let reason = "Meta refused the account's access token (invalid or expired): ask your provider to update it";
        let (status, n) = synced(&answer(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({"error": {"code": "meta_error", "message": reason}}),
        ));
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(
            matches!(&n, Notice::Problem(m) if m.contains(reason)),
            "{n:?}"
        );
        let (_, n) = synced(&answer(StatusCode::BAD_GATEWAY, serde_json::json!({})));
        assert!(
            matches!(&n, Notice::Problem(m) if m.contains("Try again")),
            "{n:?}"
        );
    }
}
