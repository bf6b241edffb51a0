//! Campaigns: create a broadcast from pasted numbers or a CSV upload (`phone` column)
//! with an approved catalogue template and its body parameters, and follow its results
//! (counts by status as a chart, failures with their hints).
//!
//! Everything is a request to the broadcast API (`POST /v1/broadcasts`,
//! `GET /v1/broadcasts/{id}`); a CSV upload is read by the API's own CSV reader
//! (`service::broadcasts::recipients_from_csv`) and sent as a JSON broadcast, so that it
//! can carry the template's parameters.
//!
//! # Switched on by the campaigns API
//! API.md "Campaigns and scheduled sends" adds routes and fields. The routes are offered
//! as soon as the access table (`http::access::ROUTES`) has them, through [`may`]; until
//! then the page hides the control or says it is not available yet:
//! - the list: `GET /v1/broadcasts` ([`LIST`]);
//! - pause, resume, cancel, retry failed: `POST /v1/broadcasts/{id}/{action}` ([`ACTIONS`]);
//! - the CSV export: `GET /v1/broadcasts/{id}/recipients.csv` ([`EXPORT`]).
//!
//! The new request fields (`name`, `send_at`) cannot be detected (the API refuses unknown
//! fields), so [`NAME_AND_SEND_AT`] switches them on.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{NaiveDateTime, Utc};
use maud::{html, Markup};
use serde_json::{json, Value};

use super::api::{segment, Answer};
use super::pages::{
    checked, confirm_page, confirmed, done, failed, form_again, form_key, page_words, parse_form,
    problem, query, redirect, text, unknown_outcome, when, Confirm, Ctx, Form,
};
use super::senders::Senders;
use super::views::{csrf, error_page, frame, page, status_chart, Notice};
use super::{may, ConsoleState};
use crate::domain::{ErrorCode, Role};
use crate::service::errors::ServiceError;

/// Switch on once `POST /v1/broadcasts` takes `"name"` and `"send_at"` (API.md
/// "Campaigns and scheduled sends"): the form then offers a name and a schedule.
pub const NAME_AND_SEND_AT: bool = true;

/// The campaign list route (offered when the access table has it).
pub const LIST: &str = "/v1/broadcasts";
/// The CSV export route (offered when the access table has it).
pub const EXPORT: &str = "/v1/broadcasts/{id}/recipients.csv";
/// The campaign moves: action, button, the campaign statuses it applies to (empty: when
/// some messages failed).
pub const ACTIONS: [(&str, &str, &[&str]); 4] = [
    ("pause", "Pause", &["scheduled", "sending"]),
    ("resume", "Resume", &["paused"]),
    (
        "cancel",
        "Cancel campaign",
        &["scheduled", "sending", "paused"],
    ),
    ("retry-failed", "Retry failed messages", &[]),
];

/// Message statuses in a campaign's chart, in order (`scheduled` and `cancelled` only
/// when the API counts them).
const CHART: [&str; 8] = [
    "scheduled",
    "accepted",
    "sending",
    "sent",
    "delivered",
    "read",
    "failed",
    "cancelled",
];

/// Failed messages read to show a campaign's failures when the API does not list them.
const FAILURE_PAGES: usize = 10;
/// Catalogue pages read for the template picker.
const TEMPLATE_PAGES: usize = 5;

type S = State<ConsoleState>;

pub(super) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route(
            "/console/campaigns",
            get(campaigns)
                .post(create)
                .layer(DefaultBodyLimit::max(FORM_LIMIT)),
        )
        .route("/console/campaigns/open", get(open))
        .route("/console/campaigns/{id}", get(results))
        .route("/console/campaigns/{id}/recipients.csv", get(export))
        .route("/console/campaigns/{id}/{action}", post(act))
}

fn action_route(action: &str) -> String {
    format!("/v1/broadcasts/{{id}}/{action}")
}

/// Whether `role` may use the campaign list (and the API has it).
pub fn list_available(role: Role) -> bool {
    may(role, "GET", LIST)
}

/// Whether `role` may `action` a campaign (and the API has the route).
pub fn action_available(role: Role, action: &str) -> bool {
    may(role, "POST", &action_route(action))
}

/// Whether `role` may export a campaign's recipients (and the API has the route).
pub fn export_available(role: Role) -> bool {
    may(role, "GET", EXPORT)
}

// ------------------------------------------------------------------ list and create

async fn campaigns(State(s): S, ctx: Ctx, q: Query<HashMap<String, String>>) -> Response {
    render_campaigns(&s, &ctx, &q.0, &Form::new(), StatusCode::OK, done(&q.0)).await
}

/// The approved templates of the catalogue (a few pages) of `waba` (empty: the default
/// number's), for the picker, and whether there were more than it reads.
async fn approved_templates(
    s: &ConsoleState,
    ctx: &Ctx,
    waba: &str,
) -> Result<(Vec<Value>, bool), Answer> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..TEMPLATE_PAGES {
        let qs = query(&[
            ("waba_id", waba),
            ("status", "approved"),
            ("limit", "100"),
            ("cursor", &cursor),
        ]);
        let a = s.api.get(&ctx.who, &format!("/v1/templates?{qs}")).await;
        if !a.ok() {
            return Err(a);
        }
        out.extend(a.body["templates"].as_array().cloned().unwrap_or_default());
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return Ok((out, false)),
        }
    }
    Ok((out, true))
}

async fn render_campaigns(
    s: &ConsoleState,
    ctx: &Ctx,
    q: &HashMap<String, String>,
    typed: &Form,
    status: StatusCode,
    mut n: Option<Notice>,
) -> Response {
    // A form whose outcome is not known comes back with its key (`form_again`): it is
    // shown whatever the page's other reads do, or a reload would make a new key and a
    // second campaign.
    let keyed = typed.contains_key("idempotency_key");
    let list = if list_available(ctx.role) {
        let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let (st, cursor) = (get("status"), get("cursor"));
        let qs = query(&[("status", &st), ("limit", "50"), ("cursor", &cursor)]);
        let mut a = s.api.get(&ctx.who, &format!("{LIST}?{qs}")).await;
        // A filter the API refuses (an old bookmark, an edited link: `?status=bogus`): the
        // list unfiltered, said so, with its filter to choose again — what the person came
        // for, rather than a page without the list. Its words are the API's.
        // Said at the top of the page, where every notice is (above the form: on a phone, a
        // screen or two before the list).
        let mut unfiltered = None;
        if a.status == StatusCode::BAD_REQUEST && !st.is_empty() {
            let why = campaign_words(&page_words(&a));
            n = n.or(Some(Notice::Alert(format!(
                "Not filtered: {why}. All campaigns are shown."
            ))));
            unfiltered = Some(why);
            a = s.api.get(&ctx.who, &format!("{LIST}?limit=50")).await;
        }
        match a.status {
            s if s.is_success() => Some(list_table(
                &a.body,
                if unfiltered.is_some() { "" } else { &st },
            )),
            // Listed in the access table but not served yet: as if not there.
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => None,
            StatusCode::BAD_REQUEST => {
                Some(html! { p.notice.problem role="alert" { "Not done: " (a.message()) } })
            }
            _ if keyed => Some(html! {
                p.notice #campaign-list-unreadable role="status" { "The list of campaigns could not be read just now." }
            }),
            _ => return failed(&a),
        }
    } else {
        None
    };
    let can_create = ctx.may("POST", "/v1/broadcasts");
    let (senders, templates) = if can_create {
        let senders = Senders::read(s, ctx).await;
        // The sender chosen above the form (`?from=`), or the one a refused form had.
        let asked = q
            .get("from")
            .or_else(|| typed.get("from"))
            .map_or("", |v| v.trim());
        let from = senders.known(asked).to_owned();
        // A keyed form's sender the numbers' read could not confirm: kept as chosen, and its
        // template with it (the default number's catalogue is not its catalogue).
        // Likewise a sender asked for (`?from=`) while the numbers could not be read: kept,
        // said so, never quietly the default number.
        let unconfirmed = (keyed || senders.unread()) && !senders.several() && !asked.is_empty();
        let from = if unconfirmed { asked.to_owned() } else { from };
        let catalogue = if unconfirmed {
            None
        } else {
            Some(approved_templates(s, ctx, senders.waba_of(&from)).await)
        };
        match catalogue {
            Some(Ok(t)) => (senders, Some((from, t))),
            // The catalogue unread: the template the form came back with is offered alone.
            None | Some(Err(_)) if keyed => {
                let chosen = typed.get("template").map_or("", |v| v.trim());
                let kept: Vec<Value> = chosen
                    .split_once(':')
                    .map(|(name, language)| {
                        serde_json::json!({"name": name, "language": language, "kept": true})
                    })
                    .into_iter()
                    .collect();
                (senders, Some((from, (kept, false))))
            }
            None => (senders, Some((from, (Vec::new(), false)))),
            Some(Err(a)) => return failed(&a),
        }
    } else {
        (Senders::empty(), None)
    };
    let body = html! {
        @if let Some((from, (list, more))) = &templates {
            (create_form(ctx, &senders, from, list, *more, typed))
        }
        // Under the page's own "Campaigns" title, a heading only after the form above.
        @if templates.is_some() { h2 { "Campaigns" } }
        @match list {
            Some(l) => (l),
            None => p.hint #campaign-list-unavailable { "A list of campaigns is not available yet.
                Each campaign's results page opens when you create it; keep its link, or
                open one by its id below." },
        }
        form.filters method="get" action="/console/campaigns/open" {
            div { label for="c-open" { "Campaign id" } input #c-open type="text" name="id" required; }
            button type="submit" { "Open" }
        }
    };
    page(
        status,
        frame(
            "Campaigns",
            &ctx.chrome("/console/campaigns"),
            n.as_ref(),
            body,
        ),
    )
}

fn list_table(body: &Value, st: &str) -> Markup {
    let list = body["broadcasts"].as_array().cloned().unwrap_or_default();
    let next = body["next_cursor"].as_str();
    html! {
        form.filters method="get" action="/console/campaigns" {
            div {
                label for="c-status" { "Status" }
                select #c-status name="status" {
                    option value="" selected[st.is_empty()] { "Any" }
                    @for x in ["scheduled", "sending", "paused", "completed", "cancelled"] {
                        option value=(x) selected[st == x] { (x) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        div.table-wrap {
            table.stack #campaigns {
                caption { "Campaigns, newest first" }
                thead { tr { th scope="col" { "Campaign" } th scope="col" { "Status" } th scope="col" { "Recipients" } th scope="col" { "Send at" } th scope="col" { "Created" } } }
                tbody {
                    @for b in &list {
                        @let id = text(b, "id");
                        tr {
                            td data-label="Campaign" { a href=(format!("/console/campaigns/{}", segment(id))) { (b["name"].as_str().filter(|n| !n.is_empty()).unwrap_or(id)) } }
                            td.status data-label="Status" { (text(b, "status")) }
                            td data-label="Recipients" { (b["total"].as_u64().or(b["accepted"].as_u64()).unwrap_or(0)) }
                            td data-label="Send at" { (when(&b["send_at"])) }
                            td data-label="Created" { (when(&b["created_at"])) }
                        }
                    }
                    @if list.is_empty() { tr { td colspan="5" { "No campaigns." } } }
                }
            }
        }
        @if let Some(c) = next {
            p { a href=(format!("/console/campaigns?{}", query(&[("status", st), ("cursor", c)]))) { "Older campaigns" } }
        }
    }
}

fn create_form(
    ctx: &Ctx,
    senders: &Senders,
    from: &str,
    templates: &[Value],
    more: bool,
    typed: &Form,
) -> Markup {
    let key = form_key(typed);
    let typed = |k: &str| typed.get(k).map(String::as_str).unwrap_or("");
    let value_of = |t: &Value| format!("{}:{}", text(t, "name"), text(t, "language"));
    // A new form offers the first marketing or utility template (what campaigns send), not
    // the first by name, which may be an authentication one (a login code); a form that
    // comes back keeps its own.
    let chosen = match typed("template") {
        "" => templates
            .iter()
            .find(|t| matches!(text(t, "category"), "marketing" | "utility"))
            .map(value_of)
            .unwrap_or_default(),
        kept => kept.to_owned(),
    };
    html! {
        h2 { "New campaign" }
        @if senders.several() {
            // The templates a campaign may use are its sender's WABA's: choosing the
            // sender shows them (a page load, no script).
            form.filters #campaign-sender method="get" action="/console/campaigns" {
                (senders.select("c-from", "from", from))
                button type="submit" { "Show its templates" }
            }
        }
        @if templates.is_empty() && senders.unread() {
            p.hint #campaign-unread { "The account's numbers could not be read just now, so the sender's templates are not shown. Reload the page in a moment." }
        } @else if templates.is_empty() {
            p.hint { "There is no approved template in the catalogue yet; see "
                a href="/console/templates" { "Templates" } "." }
        } @else {
            form.stack #new-campaign method="post" action="/console/campaigns" enctype="multipart/form-data" {
                (csrf(&ctx.csrf))
                // One key per form shown: a double-click or a resubmission makes one campaign
                // (the same key again when the form comes back after an unknown outcome).
                input type="hidden" name="idempotency_key" value=(key);
                @if senders.several() {
                    input type="hidden" name="from" value=(from);
                    p.hint #campaign-from { "Sent from " (senders.describe(from)) "." }
                } @else {
                    (Senders::kept("from", from))
                }
                @if NAME_AND_SEND_AT {
                    div { label for="c-name" { "Name (optional)" } input #c-name type="text" name="name" maxlength="400" value=(typed("name")); }
                }
                div {
                    label for="c-template" { "Template (approved ones)" }
                    select #c-template name="template" required {
                        @for t in templates {
                            @let value = value_of(t);
                            option value=(value) selected[chosen == value] {
                                @if t["kept"] == true {
                                    (text(t, "name")) " (" (text(t, "language")) ", as chosen: the catalogue could not be read just now)"
                                } @else {
                                    (text(t, "name")) " (" (text(t, "language")) ", " (text(t, "category")) ", "
                                    @let n = t["body_parameters"].as_u64().unwrap_or(0);
                                    (n) @if n == 1 { " body parameter)" } @else { " body parameters)" }
                                }
                            }
                        }
                    }
                    @if more {
                        p.hint #template-picker-cut { "The first " (TEMPLATE_PAGES * 100) " approved templates by name are offered here; a campaign with another one can be created with the API (POST /v1/broadcasts)." }
                    }
                }
                div {
                    label for="c-parameters" { "Body parameters, one a line, in order (as many as the template has)" }
                    textarea #c-parameters name="parameters" rows="3" { (typed("parameters")) }
                }
                fieldset {
                    legend { "Recipients: paste numbers or upload a CSV file" }
                    div {
                        label for="c-numbers" { "Numbers (E.164, e.g. +60123456789; one a line, or separated by commas)" }
                        textarea #c-numbers name="numbers" rows="5" { (typed("numbers")) }
                    }
                    div {
                        label for="c-file" { "Or a CSV file with a phone column (at most 10,000 rows, 2 MiB)" }
                        input #c-file type="file" name="file" accept=".csv,text/csv";
                    }
                }
                @if NAME_AND_SEND_AT {
                    div {
                        label for="c-send-at" { "Send at (UTC; leave empty to send now)" }
                        input #c-send-at type="datetime-local" name="send_at" value=(typed("send_at"));
                    }
                }
                p.hint { "Opted-out numbers are skipped. Each accepted message is paid for when the campaign is accepted." }
                button type="submit" { "Create campaign" }
            }
        }
    }
}

/// A campaign form's CSV file at most. On Lambda a request is at most 6 MB, and API
/// Gateway sends an upload base64-encoded (4/3 larger).
pub const UPLOAD_LIMIT: usize = 2 * 1024 * 1024;

/// A campaign form's body at most: the file's limit and room for the other fields. A file
/// over [`UPLOAD_LIMIT`] within it is read to its end and dropped, so that the fields after
/// it are kept too; a body over this is cut where it stops, keeping the fields before the
/// file (a browser sends them first, in the form's order).
const FORM_LIMIT: usize = 2 * UPLOAD_LIMIT;

/// What a campaign form refused for its file's size says (the form comes back, as typed).
const TOO_LARGE: &str = "the file is larger than 2 MiB, so nothing was sent. Upload a CSV \
     with the phone column (other columns are not needed), at most 10,000 rows, and attach it \
     again: the other fields are kept";

fn form_too_large() -> Response {
    error_page(
        StatusCode::PAYLOAD_TOO_LARGE,
        "The form is larger than 4 MiB; nothing was sent. Paste fewer numbers, or upload them \
         as a CSV file (at most 2 MiB).",
    )
}

fn bad_upload() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "The form could not be read; nothing was sent. Reload the page and try again.",
    )
}

/// A campaign form's file.
enum Upload {
    None,
    File(Vec<u8>),
    /// Over [`UPLOAD_LIMIT`]: not kept.
    TooLarge,
}

/// Whether a multipart read stopped at the form's size limit.
fn over_limit(e: &axum::extract::multipart::MultipartError) -> bool {
    e.status() == StatusCode::PAYLOAD_TOO_LARGE
}

/// The form fields of a campaign POST (multipart with an optional `file`, or
/// urlencoded), and the uploaded file.
async fn read_form(s: &ConsoleState, req: Request) -> Result<(Form, Upload), Response> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !multipart {
        let Ok(body) = Bytes::from_request(req, s).await else {
            return Err(bad_upload());
        };
        return Ok((parse_form(&body), Upload::None));
    }
    let Ok(mut mp) = Multipart::from_request(req, s).await else {
        return Err(bad_upload());
    };
    let mut f = Form::new();
    let mut file = Upload::None;
    loop {
        let mut part = match mp.next_field().await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            // The body is over the form's limit past a field's end: a file is the only
            // part that large (the fields read so far come back).
            Err(e) if over_limit(&e) => return Ok((f, Upload::TooLarge)),
            Err(_) => return Err(bad_upload()),
        };
        let name = part.name().unwrap_or("").to_owned();
        // Read a chunk at a time: a file over its limit is read on (to reach the fields
        // after it) but not kept.
        let mut bytes = Vec::new();
        let mut too_large = false;
        loop {
            match part.chunk().await {
                Ok(Some(_)) if too_large => {}
                Ok(Some(chunk)) if name == "file" && bytes.len() + chunk.len() > UPLOAD_LIMIT => {
                    too_large = true;
                    bytes = Vec::new();
                }
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) => break,
                // The body is over the form's limit within the file: the fields before it
                // come back; within another field, the form is refused whole.
                Err(e) if over_limit(&e) && name == "file" => return Ok((f, Upload::TooLarge)),
                Err(e) if over_limit(&e) => return Err(form_too_large()),
                Err(_) => return Err(bad_upload()),
            }
        }
        if name == "file" {
            file = match (too_large, bytes.is_empty()) {
                (true, _) => Upload::TooLarge,
                (false, true) => Upload::None,
                (false, false) => Upload::File(bytes),
            };
        } else {
            f.insert(name, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    Ok((f, file))
}

/// Pasted numbers: one a line, or separated by commas or semicolons; within a line a new
/// number starts at each `+`, and the spaces, dashes, dots and brackets people write numbers
/// with are dropped (`+60 12-345 6789` is `+60123456789`). What is still no E.164 number
/// the API names as invalid.
fn pasted_numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in text.split(['\n', '\r', ',', ';']) {
        let mut current = String::new();
        for token in entry.split_whitespace() {
            if token.starts_with('+') && !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.push_str(&crate::service::broadcasts::written_number(token));
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

/// How many of a campaign's invalid entries its page names (the count says the rest).
const INVALID_SHOWN: usize = 20;

/// What a campaign's page says of the `count` entries that were no number (`invalid`,
/// the first of them).
fn invalid_text(invalid: &[&str], count: usize) -> String {
    let named: Vec<&str> = invalid.iter().take(INVALID_SHOWN).copied().collect();
    let count = count.max(named.len());
    let mut text = if count == 1 {
        format!(
            "1 of the entries was not a valid E.164 number and was not sent: {}",
            named.join(", ")
        )
    } else {
        format!(
            "{count} of the entries were not valid E.164 numbers and were not sent: {}",
            named.join(", ")
        )
    };
    if count > named.len() {
        text.push_str(&format!(" and {} more", count - named.len()));
    }
    text.push('.');
    text
}

/// A campaign form's request, and its entries that are no number.
struct Requested {
    request: Value,
    /// Entries that are no E.164 number, in their order and in full: what the campaign's
    /// page names. The request carries each cut to [`SENT_INVALID_CHARS`], so that the API
    /// counts it (the campaign's `invalid_count`) while a 10,000-row file of long cells
    /// still fits the API's 256 KiB body.
    invalid: Vec<String>,
}

/// How much of an entry that is no number the request carries: one character more than
/// the longest E.164 number, so that what is cut is still no number.
const SENT_INVALID_CHARS: usize = 17;

/// The broadcast request a campaign form asks for, or what to tell the person.
fn broadcast_request(f: &Form, file: Option<&[u8]>) -> Result<Requested, String> {
    let get = |k: &str| f.get(k).map(|v| v.trim()).unwrap_or("");
    let Some((name, language)) = get("template").split_once(':') else {
        return Err("choose a template".into());
    };
    let pasted = pasted_numbers(get("numbers"));
    let recipients = match (file, pasted.is_empty()) {
        (Some(_), false) => {
            return Err("give either pasted numbers or a CSV file, not both".into());
        }
        (Some(csv), true) => match crate::service::broadcasts::recipients_from_csv(csv) {
            Ok(r) => r,
            Err(ServiceError::InvalidRequest(why)) => return Err(campaign_words(&why)),
            Err(_) => return Err("the CSV file could not be read".into()),
        },
        (None, false) => pasted,
        (None, true) => {
            return Err(
                "give the recipients: paste their numbers, or upload a CSV file with a \
                 phone column"
                    .into(),
            )
        }
    };
    let mut invalid = Vec::new();
    let recipients: Vec<String> = recipients
        .into_iter()
        .map(|r| {
            if crate::domain::PhoneNumber::parse(&r).is_ok() {
                return r;
            }
            let cut = r.chars().take(SENT_INVALID_CHARS).collect();
            invalid.push(r);
            cut
        })
        .collect();
    if invalid.len() == recipients.len() {
        let named: Vec<&str> = invalid.iter().map(String::as_str).collect();
        return Err(format!(
            "no entry is a valid number. {}",
            invalid_text(&named, named.len())
        ));
    }
    let mut template = json!({"name": name, "language": language});
    if let Some(components) = body_components(get("parameters")) {
        template["components"] = components;
    }
    let mut req = json!({"template": template, "recipients": recipients});
    if !get("from").is_empty() {
        req["from"] = json!(get("from"));
    }
    if NAME_AND_SEND_AT {
        if !get("name").is_empty() {
            req["name"] = json!(get("name"));
        }
        let at = get("send_at");
        if !at.is_empty() {
            let t = NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M")
                .or_else(|_| NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S"))
                .map_err(|_| "the send time must be a date and a time (UTC)".to_owned())?;
            req["send_at"] = json!(t
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
    }
    Ok(Requested {
        request: req,
        invalid,
    })
}

async fn create(State(s): S, ctx: Ctx, req: Request) -> Response {
    let (f, file) = match read_form(&s, req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let f = match checked(&s, &ctx, f).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let none = HashMap::new();
    let file = match file {
        Upload::None => None,
        Upload::File(bytes) => Some(bytes),
        // Too large: the form comes back as typed (but for its file), as any refusal does.
        Upload::TooLarge => {
            if ctx.may("POST", "/v1/broadcasts") {
                let n = Some(Notice::Problem(TOO_LARGE.into()));
                let status = StatusCode::PAYLOAD_TOO_LARGE;
                return render_campaigns(&s, &ctx, &none, &f, status, n).await;
            }
            // A role that may not: the API's refusal below, as for any form of it.
            Some(Vec::new())
        }
    };
    let (req, left_out) = match broadcast_request(&f, file.as_deref()) {
        Ok(r) => (r.request, r.invalid),
        // A role that may not is refused by the API (audited) whatever was typed, not
        // asked to mend the form.
        Err(_) if !ctx.may("POST", "/v1/broadcasts") => (json!({}), Vec::new()),
        Err(why) => {
            let n = Some(Notice::Problem(why));
            return render_campaigns(&s, &ctx, &none, &f, StatusCode::BAD_REQUEST, n).await;
        }
    };
    let key = f
        .get("idempotency_key")
        .map(String::as_str)
        .filter(|k| !k.is_empty());
    let a = s
        .api
        .call(&ctx.who, Method::POST, "/v1/broadcasts", Some(req), key)
        .await;
    if a.ok() {
        let id = text(&a.body, "id").to_owned();
        // Named in full as they were given (the API echoes them cut), counted by the API.
        let invalid: Vec<&str> = left_out.iter().map(String::as_str).collect();
        if invalid.is_empty() {
            return redirect(&format!(
                "/console/campaigns/{}?done=campaign_created",
                segment(&id)
            ));
        }
        // The entries that are no number are named on the results page, shown at once
        // (the API answers them this once and nothing keeps them; not put in a URL).
        let count = a.body["invalid_count"]
            .as_u64()
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(invalid.len());
        let n = done(&HashMap::from([(
            "done".to_owned(),
            "campaign_created".to_owned(),
        )]))
        .map(|n| match n {
            Notice::Done(text) => Notice::Done(format!("{text} {}", invalid_text(&invalid, count))),
            other => other,
        });
        let shown = render_results(&s, &ctx, &id, StatusCode::OK, n.clone()).await;
        if shown.status() == StatusCode::OK {
            return shown;
        }
        // Made, but its page could not be read just now (a limit, an outage): said so on a
        // page of its own (no API call), never as an error that invites a second campaign.
        let link = format!("/console/campaigns/{}", segment(&id));
        let body = html! {
            p { "Its page could not be shown just now. " a #campaign-link href=(link) { "Open campaign " (id) } "." }
        };
        return page(
            StatusCode::OK,
            frame(
                "Campaign accepted",
                &ctx.chrome("/console/campaigns"),
                n.as_ref(),
                body,
            ),
        );
    }
    // A role's refusal is its own page; any other 403 (the account suspended) says why.
    if a.status == StatusCode::UNAUTHORIZED
        || (a.status == StatusCode::FORBIDDEN && a.code() == "forbidden")
    {
        return failed(&a);
    }
    let (status, n) = if a.status.is_server_error() {
        (
            a.status,
            Some(match file {
                Some(_) => unknown_outcome("the campaign (attach the same file again)"),
                None => unknown_outcome("the campaign"),
            }),
        )
    } else {
        campaign_problem(&a)
    };
    let typed = form_again(&a, f);
    render_campaigns(&s, &ctx, &none, &typed, status, n).await
}

/// The API's words as a campaign page says them. The API names its resource and fields
/// (`broadcast`, `send_at`), right for an API client (who matches on the error's code, never
/// its message: API.md "Conventions"); the console's person knows a campaign and a form
/// whose field is "Send at". Only whole words: a route (`/v1/broadcasts`) stays as it is.
/// An API answer's words come through [`page_words`] first, which takes out its backticks.
pub(super) fn campaign_words(api: &str) -> String {
    let mut out = String::with_capacity(api.len());
    let mut rest = api;
    while !rest.is_empty() {
        let at = rest
            .find(|c: char| c.is_alphanumeric() || c == '_')
            .unwrap_or(rest.len());
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        let after_slash = out.ends_with('/');
        out.push_str(match word {
            _ if after_slash => word,
            "broadcast" => "campaign",
            "broadcasts" => "campaigns",
            "Broadcast" => "Campaign",
            "Broadcasts" => "Campaigns",
            "send_at" => "the send time",
            _ => word,
        });
        rest = &rest[end..];
    }
    out
}

/// [`problem`] in a campaign page's words ([`campaign_words`]).
fn campaign_problem(a: &Answer) -> (StatusCode, Option<Notice>) {
    let (status, n) = problem(a);
    let n = n.map(|n| match n {
        Notice::Problem(t) => Notice::Problem(campaign_words(&t)),
        Notice::Unknown(t) => Notice::Unknown(campaign_words(&t)),
        other => other,
    });
    (status, n)
}

async fn open(q: Query<HashMap<String, String>>, _ctx: Ctx) -> Response {
    let id = q.0.get("id").map(|v| v.trim()).unwrap_or("");
    if id.is_empty() {
        return redirect("/console/campaigns");
    }
    redirect(&format!("/console/campaigns/{}", segment(id)))
}

// ------------------------------------------------------------------ results

async fn results(
    State(s): S,
    ctx: Ctx,
    Path(id): Path<String>,
    q: Query<HashMap<String, String>>,
) -> Response {
    let n = done(&q.0);
    render_results(&s, &ctx, &id, StatusCode::OK, n).await
}

/// A campaign's failures by code: the API's `failures` when it lists them, else counted
/// from its failed messages (each failed message's error carries its hint).
async fn failures(s: &ConsoleState, ctx: &Ctx, id: &str, b: &Value) -> Vec<Value> {
    if let Some(f) = b["failures"].as_array() {
        return f.clone();
    }
    if b["counts"]["failed"].as_u64().unwrap_or(0) == 0 {
        return Vec::new();
    }
    // Its messages are made when it is accepted: none is older than the campaign.
    let since = chrono::DateTime::parse_from_rfc3339(text(b, "created_at"))
        .map(|t| (t.with_timezone(&Utc) - chrono::Duration::seconds(1)).to_rfc3339())
        .unwrap_or_default();
    let mut by_code: BTreeMap<String, (Value, u64)> = BTreeMap::new();
    let mut cursor = String::new();
    for _ in 0..FAILURE_PAGES {
        let qs = query(&[
            ("status", "failed"),
            ("since", &since),
            ("limit", "100"),
            ("cursor", &cursor),
        ]);
        let a = s.api.get(&ctx.who, &format!("/v1/messages?{qs}")).await;
        if !a.ok() {
            break;
        }
        for m in a.body["messages"].as_array().into_iter().flatten() {
            if m["broadcast_id"].as_str() != Some(id) {
                continue;
            }
            let code = m["error"]["code"].to_string().trim_matches('"').to_owned();
            by_code
                .entry(code)
                .or_insert_with(|| (m["error"].clone(), 0))
                .1 += 1;
        }
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    by_code
        .into_iter()
        .map(|(code, (e, count))| {
            json!({"code": code, "title": e["title"], "hint": e["hint"], "count": count})
        })
        .collect()
}

/// Whether a later try may fix a failure of the page's list (its `code`: Meta's number,
/// or Kirim's word): the API's own rule for what `retry-failed` retries
/// (`service::broadcasts::retryable`), so the button is offered only when there is
/// something to retry.
fn a_later_try_may_fix(failure: &Value) -> bool {
    let code = match &failure["code"] {
        Value::Number(n) => n.as_i64().map(ErrorCode::Meta),
        Value::String(s) => Some(
            s.parse::<i64>()
                .map_or_else(|_| ErrorCode::from(s.as_str()), ErrorCode::Meta),
        ),
        _ => None,
    };
    code.is_some_and(|c| crate::service::broadcasts::retryable(&c))
}

async fn render_results(
    s: &ConsoleState,
    ctx: &Ctx,
    id: &str,
    status: StatusCode,
    n: Option<Notice>,
) -> Response {
    let a = s
        .api
        .get(&ctx.who, &format!("/v1/broadcasts/{}", segment(id)))
        .await;
    if !a.ok() {
        return failed(&a);
    }
    let b = &a.body;
    let counts_of = &b["counts"];
    let mut counts: Vec<(&str, u64)> = CHART
        .iter()
        .filter(|st| !matches!(**st, "scheduled" | "cancelled") || counts_of.get(**st).is_some())
        .map(|st| (*st, counts_of[*st].as_u64().unwrap_or(0)))
        .collect();
    // A status the console does not know yet still shows.
    for (k, v) in counts_of.as_object().into_iter().flatten() {
        if !CHART.contains(&k.as_str()) {
            counts.push((k.as_str(), v.as_u64().unwrap_or(0)));
        }
    }
    let fails = failures(s, ctx, id, b).await;
    // The number it goes from, named as the dashboard names numbers: one read of the
    // account's numbers per page view.
    let senders = Senders::read(s, ctx).await;
    let state = text(b, "status");
    let failed_count = counts_of["failed"].as_u64().unwrap_or(0);
    let moves: Vec<(&str, &str)> = ACTIONS
        .iter()
        .filter(|(action, _, applies)| {
            action_available(ctx.role, action)
                && if applies.is_empty() {
                    // A campaign is retried once, when it has completed (or was
                    // cancelled): then its retry's page retries the rest.
                    failed_count > 0
                        && fails.iter().any(a_later_try_may_fix)
                        && b["retried_by"].is_null()
                        && matches!(state, "completed" | "cancelled")
                } else {
                    applies.contains(&state)
                }
        })
        .map(|(action, label, _)| (*action, *label))
        .collect();
    let name = b["name"].as_str().filter(|n| !n.is_empty());
    let num = |k: &str| b[k].as_u64().unwrap_or(0);
    let body = html! {
        dl.facts {
            dt { "Id" } dd #campaign-id { (text(b, "id")) }
            @if let Some(nm) = name { dt { "Name" } dd { (nm) } }
            dt { "Status" } dd #campaign-status { (state) }
            dt { "From" } dd #campaign-from { (senders.sent_from(&b["from"])) }
            @if !b["template"].is_null() {
                dt { "Template" } dd { (text(&b["template"], "name")) " " (text(&b["template"], "language")) " (" (text(&b["template"], "category")) ")" }
            }
            @if !b["send_at"].is_null() { dt { "Send at" } dd { (when(&b["send_at"])) } }
            dt { "Created" } dd { (when(&b["created_at"])) }
            dt { "Recipients" } dd #campaign-accepted { (num("accepted").max(num("total"))) }
            dt { "Skipped (opted out)" } dd { (num("skipped_opted_out")) }
            @if b.get("duplicates").is_some() { dt { "Duplicates dropped" } dd { (num("duplicates")) } }
            @if b.get("invalid_count").is_some() { dt { "Invalid numbers" } dd { (num("invalid_count")) } }
            @if let Some(of) = b["retry_of"].as_str() {
                dt { "Retries" } dd { a href=(format!("/console/campaigns/{}", segment(of))) { (of) } }
            }
            @if let Some(by) = b["retried_by"].as_str() {
                dt { "Retried by" } dd #campaign-retried-by { a href=(format!("/console/campaigns/{}", segment(by))) { (by) } }
            }
        }
        @if !moves.is_empty() {
            div.actions {
                @for (action, label) in &moves {
                    // The retry's form asks for the parameters: label, field and button stacked.
                    form.inline[*action != "retry-failed"].stack[*action == "retry-failed"] method="post" action=(format!("/console/campaigns/{}/{action}", segment(id))) {
                        (csrf(&ctx.csrf))
                        @if *action == "retry-failed" {
                            input type="hidden" name="idempotency_key" value=(crate::domain::new_id());
                            // Kirim keeps no message content: a template's parameters come
                            // again with the retry.
                            label for="r-parameters" { "Body parameters for the retry, one a line, in order (as many as the template has)" }
                            textarea #r-parameters name="parameters" rows="2" {}
                        }
                        button.danger[*action == "cancel"] type="submit" { (label) }
                    }
                }
            }
        }
        h2 { "Messages by status" }
        @if state == "scheduled" {
            p.hint #campaign-waiting { "Nothing is sent before " (when(&b["send_at"])) ": its recipients' messages are counted here from then." }
        }
        (status_chart("campaign", "Messages of this campaign by status", &counts))
        div.table-wrap {
            table #campaign-counts {
                caption { "Messages by status" }
                thead { tr { th scope="col" { "Status" } th scope="col" { "Messages" } } }
                tbody { @for (st, c) in &counts { tr { th scope="row" { (st) } td { (c) } } } }
            }
        }
        h2 { "Failures" }
        @if fails.is_empty() {
            p { "No failed messages." }
        } @else {
            div.table-wrap {
                table.stack #campaign-failures {
                    caption { "Failed messages by reason" }
                    thead { tr { th scope="col" { "Code" } th scope="col" { "Reason" } th scope="col" { "Messages" } th scope="col" { "What to do" } } }
                    tbody {
                        @for f in &fails {
                            tr {
                                td data-label="Code" { (f["code"].to_string().trim_matches('"')) }
                                td data-label="Reason" { (text(f, "title")) }
                                td data-label="Messages" { (f["count"].as_u64().unwrap_or(0)) }
                                td.hint-cell data-label="What to do" { (text(f, "hint")) }
                            }
                        }
                    }
                }
            }
        }
        @if export_available(ctx.role) {
            p { a #campaign-export href=(format!("/console/campaigns/{}/recipients.csv", segment(id))) download { "Download the recipients as CSV (status and errors, no content)" } }
        }
        p { a href="/console/campaigns" { "All campaigns" } }
    };
    page(
        status,
        frame(
            "Campaign",
            &ctx.chrome("/console/campaigns"),
            n.as_ref(),
            body,
        ),
    )
}

fn not_available() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "This is not available yet; nothing was changed.",
    )
}

/// A form's body parameters (one a line, in order) as a template's `components`; `None`
/// when there are none.
pub(super) fn body_components(lines: &str) -> Option<Value> {
    let parameters: Vec<Value> = lines
        .lines()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| json!({"type": "text", "text": p}))
        .collect();
    (!parameters.is_empty()).then(|| json!([{"type": "body", "parameters": parameters}]))
}

async fn act(
    State(s): S,
    ctx: Ctx,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let f = match checked(&s, &ctx, parse_form(&body)).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some((action, _, _)) = ACTIONS.iter().find(|(a, _, _)| *a == action) else {
        return error_page(StatusCode::NOT_FOUND, "There is no such page.");
    };
    // A route the API does not have is not asked. A role that may not is: the API's
    // gate refuses it (`403`, the same page) and writes the refusal to the audit trail,
    // as for every other console form.
    if !may(Role::Admin, "POST", &action_route(action)) {
        return not_available();
    }
    // A role that may not is not asked to confirm: the API refuses it below (audited).
    if *action == "cancel" && !confirmed(&f) && ctx.may("POST", &action_route(action)) {
        // The campaign is named as it is read by its id (never as a posted field says): one
        // read of its view, as its results page makes. Not there (another tenant's): 404.
        let uri = format!("/v1/broadcasts/{}", segment(&id));
        let a = s.api.get(&ctx.who, &uri).await;
        if matches!(a.status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) {
            return failed(&a);
        }
        let name = a.body["name"].as_str().filter(|n| a.ok() && !n.is_empty());
        let question = match name {
            Some(n) => format!("Cancel the campaign “{n}”?"),
            None => format!("Cancel campaign {id}?"),
        };
        let means = format!(
            "Campaign {id}: the recipients it has not sent to yet will not be sent to, and \
             their credits are refunded; messages already sent stay sent. A cancelled campaign \
             cannot be resumed."
        );
        let c = Confirm {
            nav: "/console/campaigns",
            question,
            means: &means,
            button: "Cancel the campaign",
            back: format!("/console/campaigns/{}", segment(&id)),
        };
        let to = format!("/console/campaigns/{}/cancel", segment(&id));
        return confirm_page(&ctx, c, &to, &[]);
    }
    let uri = format!("/v1/broadcasts/{}/{action}", segment(&id));
    // A retry carries the template's body parameters again (the API's `components`).
    let req = (*action == "retry-failed")
        .then(|| body_components(f.get("parameters").map_or("", String::as_str)))
        .flatten()
        .map(|components| json!({ "components": components }));
    let key = (*action == "retry-failed")
        .then(|| f.get("idempotency_key").map(String::as_str))
        .flatten()
        .filter(|k| !k.is_empty());
    let a = s.api.call(&ctx.who, Method::POST, &uri, req, key).await;
    if a.ok() {
        let (to, note) = match *action {
            "retry-failed" => (text(&a.body, "id").to_owned(), "campaign_retried"),
            "pause" => (id, "campaign_paused"),
            // A campaign paused before its send time waits for it again.
            "resume" if text(&a.body, "status") == "scheduled" => (id, "campaign_rescheduled"),
            "resume" => (id, "campaign_resumed"),
            _ => (id, "campaign_cancelled"),
        };
        return redirect(&format!("/console/campaigns/{}?done={note}", segment(&to)));
    }
    match a.status {
        StatusCode::METHOD_NOT_ALLOWED => not_available(),
        // A role's refusal is its own page; any other 403 (the sender held, the account
        // suspended, marketing paused) says why on the campaign's page.
        StatusCode::FORBIDDEN if a.code() != "forbidden" => {
            let (status, n) = campaign_problem(&a);
            render_results(&s, &ctx, &id, status, n).await
        }
        StatusCode::CONFLICT | StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            let (status, n) = campaign_problem(&a);
            render_results(&s, &ctx, &id, status, n).await
        }
        _ => failed(&a),
    }
}

async fn export(State(s): S, ctx: Ctx, Path(id): Path<String>) -> Response {
    if !export_available(ctx.role) {
        return not_available();
    }
    let uri = format!("/v1/broadcasts/{}/recipients.csv", segment(&id));
    let raw = s.api.raw(&ctx.who, Method::GET, &uri, None, None).await;
    if !raw.status.is_success() {
        if raw.status == StatusCode::METHOD_NOT_ALLOWED {
            return not_available();
        }
        let body = serde_json::from_slice(&raw.bytes).unwrap_or(Value::Null);
        return failed(&Answer {
            status: raw.status,
            body,
            retry_after: raw.retry_after,
        });
    }
    let mut res = raw.bytes.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        raw.content_type
            .unwrap_or_else(|| HeaderValue::from_static("text/csv; charset=utf-8")),
    );
    let file: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(40)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"campaign-{file}-recipients.csv\""
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_invalid_entry_is_told_in_the_singular_and_more_in_the_plural() {
        assert_eq!(
            super::invalid_text(&["0123"], 1),
            "1 of the entries was not a valid E.164 number and was not sent: 0123."
        );
        assert!(super::invalid_text(&["0123", "x"], 2)
            .starts_with("2 of the entries were not valid E.164 numbers"));
    }
}
