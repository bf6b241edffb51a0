//! Usage by day and category (`GET /v1/usage`) and the tenant's phone numbers on the
//! dashboard (`GET /v1/phone-numbers`).
//!
//! # Switched on by the pricing and phone-number API
//! Both routes are offered as soon as the access table (`http::access::ROUTES`) has them
//! ([`may`]); until then the usage page says it is not available yet and the dashboard
//! shows no phone numbers. Nothing else needs switching on.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{Duration, NaiveDate, Utc};
use maud::{html, Markup};
use serde_json::Value;

use super::api::segment;
use super::pages::{failed, form_day, problem, query, text, Ctx};
use super::views::{frame, page, Notice};
use super::{may, ConsoleState};
use crate::domain::Role;
use crate::service::usage::MAX_DAYS;

pub const USAGE: &str = "/v1/usage";
pub const PHONE_NUMBERS: &str = "/v1/phone-numbers";
/// The access table's route an admin resumes a held number by.
pub const RESUME_NUMBER: &str = "/v1/phone-numbers/{phone_number_id}/resume";

pub(super) fn routes() -> Router<ConsoleState> {
    Router::new().route("/console/usage", get(usage)).route(
        "/console/phone-numbers/{id}/resume",
        axum::routing::post(resume_number),
    )
}

/// An admin resumes a number Meta's limit held (`POST /v1/phone-numbers/{id}/resume`),
/// after a confirmation that says what it means.
async fn resume_number(
    State(s): State<ConsoleState>,
    ctx: Ctx,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let f = match super::pages::form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !super::pages::confirmed(&f) {
        let c = super::pages::Confirm {
            nav: "/console/",
            question: format!("Resume sending from {id}?"),
            means: "Meta limited this number because too many of its messages were blocked or \
                    reported as spam. Resume it only once its messages' quality has improved: \
                    sending again too soon can get it limited again, or worse.",
            button: "Resume the number",
            back: "/console/".into(),
        };
        let action = format!("/console/phone-numbers/{}/resume", segment(&id));
        return super::pages::confirm_page(&ctx, c, &action, &[]);
    }
    let uri = format!("/v1/phone-numbers/{}/resume", segment(&id));
    let a = s
        .api
        .call(&ctx.who, axum::http::Method::POST, &uri, None, None)
        .await;
    if a.ok() {
        return super::pages::redirect("/console/?done=number_resumed");
    }
    failed(&a)
}

/// Whether `role` may read usage (and the API has the route).
pub fn usage_available(role: Role) -> bool {
    may(role, "GET", USAGE)
}

async fn usage(
    State(s): State<ConsoleState>,
    ctx: Ctx,
    q: Query<HashMap<String, String>>,
) -> Response {
    let today = Utc::now().date_naive();
    let get = |k: &str| q.0.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let day = |v: String, default: NaiveDate| {
        if v.is_empty() {
            Some(default)
        } else {
            form_day(&v)
        }
    };
    // The 30 days up to To (today when not given): a To alone is not checked against a
    // From the page chose.
    let to = day(get("to"), today);
    let from = day(get("from"), to.unwrap_or(today) - Duration::days(29));
    let (mut status, mut n) = (StatusCode::OK, None);
    let mut rows: Vec<Value> = Vec::new();
    let mut available = usage_available(ctx.role);
    match (from, to) {
        // The API's own rules on a range, said in the form's words (its `400` names its
        // parameters, from and to, which the form calls otherwise).
        (Some(f), Some(t)) if available && f > t => {
            status = StatusCode::BAD_REQUEST;
            n = Some(Notice::Problem(
                "the From day must not be after the To day".into(),
            ));
        }
        (Some(f), Some(t)) if available && (t - f).num_days() + 1 > MAX_DAYS => {
            status = StatusCode::BAD_REQUEST;
            n = Some(Notice::Problem(format!(
                "the range from the From day to the To day may cover at most {MAX_DAYS} days"
            )));
        }
        (Some(f), Some(t)) if available => {
            let (f, t) = (
                f.format("%Y-%m-%d").to_string(),
                t.format("%Y-%m-%d").to_string(),
            );
            let a = s
                .api
                .get(
                    &ctx.who,
                    &format!("{USAGE}?{}", query(&[("from", &f), ("to", &t)])),
                )
                .await;
            match a.status {
                st if st.is_success() => {
                    rows = a.body["usage"].as_array().cloned().unwrap_or_default();
                }
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => available = false,
                StatusCode::BAD_REQUEST => (status, n) = problem(&a),
                _ => return failed(&a),
            }
        }
        (Some(_), Some(_)) => {}
        (f, t) => {
            // Which of the form's days is not one.
            let which = match (f, t) {
                (None, Some(_)) => "the From day must be a day",
                (Some(_), None) => "the To day must be a day",
                _ => "the From and To days must be days",
            };
            status = StatusCode::BAD_REQUEST;
            n = Some(Notice::Problem(format!("{which} (YYYY-MM-DD)")));
        }
    }
    let show = |d: Option<NaiveDate>, raw: String| {
        d.map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or(raw)
    };
    let (from_s, to_s) = (show(from, get("from")), show(to, get("to")));
    // A refused range has no usage to show, not none: only its refusal.
    let refused = status == StatusCode::BAD_REQUEST;
    let body = html! {
        @if !available {
            p.hint #usage-unavailable { "Usage by day and category is not available yet." }
        } @else {
            p.hint { "Per UTC day: how Meta priced your messages (category and type), and the
                credits Kirim debited for them." }
            form.filters method="get" action="/console/usage" {
                div { label for="u-from" { "From (UTC day)" } input #u-from type="date" name="from" value=(from_s); }
                div { label for="u-to" { "To (UTC day)" } input #u-to type="date" name="to" value=(to_s); }
                button type="submit" { "Show" }
            }
            @if !refused {
                (totals(&rows))
                div.table-wrap {
                    table.stack #usage {
                        caption { "Usage by day" }
                        thead { tr { th scope="col" { "Day" } th scope="col" { "Category" } th scope="col" { "Pricing type" } th scope="col" { "Messages" } th scope="col" { "Credits" } } }
                        tbody {
                            @for r in &rows {
                                tr {
                                    td data-label="Day" { (text(r, "date")) } td data-label="Category" { (text(r, "category")) } td data-label="Pricing type" { (text(r, "pricing_type")) }
                                    td data-label="Messages" { (r["messages"].as_i64().unwrap_or(0)) } td data-label="Credits" { (r["credits"].as_i64().unwrap_or(0)) }
                                }
                            }
                            @if rows.is_empty() { tr { td colspan="5" { "No usage in these days." } } }
                        }
                    }
                }
            }
        }
    };
    page(
        status,
        frame("Usage", &ctx.chrome("/console/usage"), n.as_ref(), body),
    )
}

/// Messages and credits per category over the shown days.
fn totals(rows: &[Value]) -> Markup {
    let mut by: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in rows {
        let e = by.entry(text(r, "category").to_owned()).or_default();
        e.0 += r["messages"].as_i64().unwrap_or(0);
        e.1 += r["credits"].as_i64().unwrap_or(0);
    }
    html! {
        @if !by.is_empty() {
            div.cards {
                @for (category, (messages, credits)) in &by {
                    div.card { div { (category) } div.big { (messages) } div.hint { "messages, " (credits) " credits" } }
                }
            }
        }
    }
}

/// The dashboard's phone numbers section, or nothing when the API has no such route yet
/// (or the role may not read it).
pub(super) async fn phone_numbers(s: &ConsoleState, ctx: &Ctx) -> Markup {
    if !may(ctx.role, "GET", PHONE_NUMBERS) {
        return html! {};
    }
    let a = s.api.get(&ctx.who, PHONE_NUMBERS).await;
    if !a.ok() {
        // Not served yet (404/405), or not readable now: the dashboard goes on without.
        return html! {};
    }
    let list = a.body["phone_numbers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    html! {
        h2 { "Phone numbers" }
        div.table-wrap {
            table.stack #phone-numbers {
                caption { "Your sending phone numbers" }
                thead { tr { th scope="col" { "Number" } th scope="col" { "Phone number id" } th scope="col" { "Default" } th scope="col" { "Quality" } th scope="col" { "Messages a second" } th scope="col" { "Sending" } } }
                tbody {
                    @for p in &list {
                        @let id = text(p, "phone_number_id");
                        tr {
                            td data-label="Number" { (p["display_phone_number"].as_str().filter(|d| !d.is_empty()).unwrap_or("—")) }
                            td data-label="Phone number id" { (id) }
                            td data-label="Default" { @if p["default"].as_bool() == Some(true) { "default" } @else { "—" } }
                            td data-label="Quality" { (text(p, "quality")) }
                            td data-label="Messages a second" { (p["throughput_per_sec"].as_i64().unwrap_or(0)) }
                            td data-label="Sending" {
                                // One element: a stacked cell (375 px) puts its
                                // children beside the label, and loose text would
                                // fall under it.
                                @if p["hold"].is_object() {
                                    div.hold {
                                        strong.held { "Held" }
                                        " since " (super::pages::when(&p["hold"]["since"])) " — Meta error " (p["hold"]["code"].as_i64().unwrap_or(0)) ": " (text(&p["hold"], "reason"))
                                        @if may(ctx.role, "POST", RESUME_NUMBER) {
                                            form method="post" action=(format!("/console/phone-numbers/{}/resume", segment(id))) {
                                                (super::views::csrf(&ctx.csrf))
                                                button type="submit" { "Resume…" }
                                            }
                                        }
                                    }
                                } @else { "yes" }
                            }
                        }
                    }
                    @if list.is_empty() { tr { td colspan="6" { "No phone numbers." } } }
                }
            }
        }
    }
}
