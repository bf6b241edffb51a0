//! `GET /v1/account/export` (admin): the tenant's retained metadata as JSON lines
//! (`application/x-ndjson`), one object per line with a `type` field: one `export` header,
//! then every `message`, `opt_out`, `audit_event`, `ledger_entry`, `phone_number` (as
//! `GET /v1/phone-numbers` shows it) and `usage_row` (as `GET /v1/usage` shows it, a year
//! of days at a time over the billing retention) still retained.
//!
//! It pages through the stores (100 items a page) while the body streams, so an export
//! never holds a tenant's whole history in memory. On Lambda a response is buffered whole
//! (at most 6 MB) and must end within API Gateway's 30 s: a response therefore stops after
//! about `KIRIM_EXPORT_PAGE_BYTES` (3 MiB) or 20 s, with a last line
//! `{"type":"next","cursor"}`, and `?cursor=` continues from there (the cursor is where the
//! walk stood: a section and its store's cursor). The lines are the API's own views:
//! never message content (none is stored) and never secrets (key hashes, secret names).
//! A storage error after the first line cannot change the status any more: the stream then
//! ends with a `{"type":"error"}` line, and a client must treat an export without the
//! closing `{"type":"end"}` line as incomplete.

use axum::body::{Body, Bytes};
use axum::extract::State;

use super::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream;
use serde::Serialize;
use serde_json::{json, Value};

use super::access::TenantCtx;
use super::optouts::OptOutView;
use super::views::MessageView;
use super::AppState;
use chrono::NaiveDate;

use crate::domain::{RetentionClass, TenantId};
use crate::ports::{AuditQuery, MessageQuery};
use crate::service::audit::EventView;
use crate::service::Deps;
use crate::store_error::StoreError;

const PAGE: usize = 100;
/// Days of usage rows read at a time.
const USAGE_DAYS: i64 = 366;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/account/export", get(export))
}

/// How long one response may take before it ends with a `next` cursor (API Gateway ends
/// a request at 30 s).
const TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);
/// The longest store cursor a `next` cursor may carry (a forged one is refused, not
/// handed to the store). DynamoDB's after an opt-out under the longest user id
/// ([`crate::domain::MAX_USER_ID`]) is 263 characters: it was 256, and the export
/// refused its own cursor there, for good (a page ends at the same place each time).
const MAX_INNER_CURSOR: usize = 512;

/// Where the walk stands: the section and its store's cursor. Serialised (JSON, then
/// base64url) as the `next` line's cursor.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[serde(tag = "s", content = "c", rename_all = "snake_case")]
enum Step {
    Header,
    Messages(Option<String>),
    OptOuts(Option<String>),
    Audit(Option<u64>),
    Ledger(Option<String>),
    Numbers,
    /// Usage rows of the days from this one, at most a year of them at a time.
    Usage(NaiveDate),
    End,
    Done,
}

fn line(kind: &str, v: impl Serialize) -> String {
    let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("type".into(), Value::String(kind.to_owned()));
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// The first day of usage rows exported: usage rows are billing records, so every day the
/// billing retention keeps.
fn usage_start(deps: &Deps) -> NaiveDate {
    let now = deps.clock.now();
    let kept_days = deps
        .settings
        .retention
        .expiry(RetentionClass::Billing, now)
        .map(|e| (e - now.timestamp()) / 86_400 + 1)
        .unwrap_or(3_660);
    now.date_naive() - chrono::Duration::days(kept_days.clamp(0, 36_600))
}

/// One page of lines and the step after it.
async fn page(deps: &Deps, tenant: &TenantId, step: Step) -> Result<(String, Step), StoreError> {
    let mut out = String::new();
    let next = match step {
        Step::Header => {
            out.push_str(&line(
                "export",
                json!({"tenant_id": tenant, "generated_at": deps.clock.now()}),
            ));
            Step::Messages(None)
        }
        Step::Messages(cursor) => {
            let q = MessageQuery {
                limit: PAGE,
                cursor,
                ..MessageQuery::default()
            };
            let p = deps.messages.list_messages(tenant, &q).await?;
            for m in &p.messages {
                out.push_str(&line("message", MessageView::from(m)));
            }
            match p.next_cursor {
                Some(c) => Step::Messages(Some(c)),
                None => Step::OptOuts(None),
            }
        }
        Step::OptOuts(cursor) => {
            let p = deps
                .opt_outs
                .list_opt_outs(tenant, PAGE, cursor.as_deref())
                .await?;
            for (o, k) in p.opt_outs.iter().zip(&p.keys) {
                out.push_str(&line("opt_out", OptOutView::kept_under(o, k)));
            }
            match p.next_cursor {
                Some(c) => Step::OptOuts(Some(c)),
                None => Step::Audit(None),
            }
        }
        Step::Audit(before) => {
            let q = AuditQuery {
                limit: PAGE,
                before_seq: before,
                ..AuditQuery::default()
            };
            let (events, next) = deps.audit.list(tenant.as_str(), &q).await?;
            for e in &events {
                out.push_str(&line("audit_event", EventView::from(e)));
            }
            match next {
                Some(seq) => Step::Audit(Some(seq)),
                None => Step::Ledger(None),
            }
        }
        Step::Ledger(after) => {
            let (entries, next) = deps
                .ledger
                .entries_page(tenant, PAGE, after.as_deref())
                .await?;
            for e in &entries {
                out.push_str(&line(
                    "ledger_entry",
                    json!({"id": e.id, "amount": e.amount, "kind": e.kind.as_str(),
                           "reference": e.reference, "message_id": e.message_id, "at": e.at}),
                ));
            }
            match next {
                Some(id) => Step::Ledger(Some(id)),
                None => Step::Numbers,
            }
        }
        Step::Numbers => {
            let t = crate::service::auth::load_tenant(deps, tenant)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let numbers = crate::service::numbers::list(deps, &t)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            for n in &numbers {
                out.push_str(&line("phone_number", n));
            }
            Step::Usage(usage_start(deps))
        }
        Step::Usage(from) => {
            let today = deps.clock.now().date_naive();
            let to = from
                .checked_add_signed(chrono::Duration::days(USAGE_DAYS - 1))
                .unwrap_or(today)
                .min(today);
            let mut rows = deps.usage.usage(tenant, from, to).await?;
            rows.sort_by(|a, b| {
                (a.date, &a.category, &a.pricing_type).cmp(&(b.date, &b.category, &b.pricing_type))
            });
            for r in &rows {
                out.push_str(&line("usage_row", r));
            }
            if to >= today {
                Step::End
            } else {
                Step::Usage(to + chrono::Duration::days(1))
            }
        }
        Step::End => {
            out.push_str(&line("end", json!({})));
            Step::Done
        }
        Step::Done => Step::Done,
    };
    Ok((out, next))
}

impl Step {
    fn cursor(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// A cursor this export made, else `None` (a store cursor must be short printable
    /// ASCII, as the stores make them, and is then the store's to judge; a usage day must
    /// not be after `today`, and one before `first_day` — the export began before a UTC
    /// midnight, or before the billing retention changed — continues from `first_day`, up
    /// to [`USAGE_CURSOR_SLACK_DAYS`] before it; one further back is no cursor it made).
    fn from_cursor(raw: &str, first_day: NaiveDate, today: NaiveDate) -> Option<Step> {
        use base64::Engine;
        if raw.len() > 2 * MAX_INNER_CURSOR {
            return None;
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .ok()?;
        let step: Step = serde_json::from_slice(&json).ok()?;
        let inner_ok = |c: &Option<String>| {
            c.as_deref().is_none_or(|c| {
                !c.is_empty()
                    && c.len() <= MAX_INNER_CURSOR
                    && c.bytes().all(|b| b.is_ascii_graphic())
            })
        };
        let ok = match &step {
            Step::Messages(c) | Step::OptOuts(c) => inner_ok(c),
            Step::Ledger(c) => {
                inner_ok(c)
                    && c.as_deref()
                        .is_none_or(|c| ulid::Ulid::from_string(c).is_ok())
            }
            Step::Header | Step::Done => false,
            Step::Usage(d) => {
                let oldest = first_day - chrono::Duration::days(USAGE_CURSOR_SLACK_DAYS);
                (oldest..=today).contains(d)
            }
            Step::Audit(_) | Step::Numbers | Step::End => true,
        };
        ok.then_some(match step {
            Step::Usage(d) => Step::Usage(d.max(first_day)),
            other => other,
        })
    }
}

/// How far before the first usage day a usage cursor may point ([`Step::from_cursor`]).
const USAGE_CURSOR_SLACK_DAYS: i64 = 31;

/// Where one response stands: the next step, the bytes written, and when it began.
struct Walk {
    step: Option<Step>,
    bytes: usize,
    started: std::time::Instant,
}

async fn export(
    State(s): State<AppState>,
    ctx: TenantCtx,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut first = Step::Header;
    let (first_day, today) = (usage_start(&s.deps), s.deps.clock.now().date_naive());
    for (k, v) in &params {
        match (k.as_str(), Step::from_cursor(v, first_day, today)) {
            ("cursor", Some(step)) => first = step,
            ("cursor", None) => {
                return super::error::ApiError::invalid(
                    "cursor is not one this export gave (take it from the `next` line)",
                )
                .into_response()
            }
            _ => {
                return super::error::ApiError::invalid(format!(
                    "unknown query parameter `{}`; the export takes only cursor",
                    super::error::echoed(k, super::error::ECHOED_NAME)
                ))
                .into_response()
            }
        }
    }
    let deps = s.deps.clone();
    let tenant = ctx.tenant_id().clone();
    let budget = deps.settings.export_page_bytes;
    let started = std::time::Instant::now();
    // The first page is read before the answer's status is sent: a store cursor the store
    // does not take is `400`, and a store that fails at once is `503`, not a `200` with an
    // `error` line.
    let (head, next) = match page(&deps, &tenant, first).await {
        Ok(p) => p,
        Err(StoreError::InvalidCursor) => {
            return super::error::ApiError::invalid(
                "cursor is not one this export gave (take it from the `next` line)",
            )
            .into_response()
        }
        Err(e) => {
            return super::error::ApiError::from(crate::service::errors::ServiceError::from(e))
                .into_response()
        }
    };
    let walk = Walk {
        step: Some(next),
        bytes: head.len(),
        started,
    };
    // The body is read after the handler returned, outside its request span: the request
    // id goes with the stream for its error line.
    let request_id = crate::telemetry::request_id();
    let body = stream::unfold(walk, move |mut walk| {
        let deps = deps.clone();
        let tenant = tenant.clone();
        let request_id = request_id.clone();
        async move {
            let step = walk.step.take()?;
            if matches!(step, Step::Done) {
                return None;
            }
            // This response has carried its share: the rest comes with the cursor.
            if walk.bytes >= budget || walk.started.elapsed() >= TIME_BUDGET {
                let text = line("next", json!({"cursor": step.cursor()}));
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(text)), walk));
            }
            match page(&deps, &tenant, step).await {
                Ok((text, next)) => {
                    walk.bytes += text.len();
                    walk.step = Some(next);
                    Some((Ok(Bytes::from(text)), walk))
                }
                Err(e) => {
                    tracing::error!(request_id = request_id.as_deref(), tenant_id = %tenant, error = %e, "export stopped by a storage error");
                    let text = line("error", json!({"code": "unavailable"}));
                    Some((Ok(Bytes::from(text)), walk))
                }
            }
        }
    });
    let head = stream::once(async move { Ok::<_, std::convert::Infallible>(Bytes::from(head)) });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(futures::StreamExt::chain(head, body)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::Step;
    use base64::Engine;

    fn day(y: i32, m: u32, d: u32) -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
    }

    fn encoded(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn a_cursor_the_export_made_reads_back_as_its_step() {
        for step in [
            Step::Messages(Some("01J9Z8Q4S7YF2K3M5N6P7R8T9W".into())),
            Step::Messages(None),
            Step::OptOuts(Some("+60123456789".into())),
            Step::Audit(Some(42)),
            Step::Ledger(Some("01J9Z8Q4S7YF2K3M5N6P7R8T9W".into())),
            Step::Numbers,
            Step::Usage(day(2026, 1, 2)),
            Step::End,
        ] {
            assert_eq!(
                Step::from_cursor(&step.cursor(), day(2020, 1, 1), day(2026, 12, 2)),
                Some(step)
            );
        }
    }

    /// DynamoDB's cursor after an opt-out under the longest user id Meta may send (its
    /// pk and sk, as JSON, base64url) is one the export carries and takes back.
    #[test]
    fn the_cursor_after_an_opt_out_under_the_longest_user_id_reads_back() {
        let user = format!("US.{}", "1".repeat(crate::domain::MAX_USER_ID - 3));
        let store = encoded(&format!(
            r#"{{"pk":"TENANT#01J9Z8Q4S7YF2K3M5N6P7R8T9W","sk":"OPTOUT#{user}"}}"#
        ));
        assert!(store.len() > 256, "{}", store.len());
        let step = Step::OptOuts(Some(store));
        assert_eq!(
            Step::from_cursor(&step.cursor(), day(2020, 1, 1), day(2026, 12, 2)),
            Some(step)
        );
    }

    /// An export whose usage cursor was made before a UTC midnight (the first day kept has
    /// moved on a day since) goes on from the first day, not `400`.
    #[test]
    fn a_usage_cursor_from_before_midnight_continues_from_the_first_day_kept() {
        let before = Step::Usage(day(2019, 12, 31));
        assert_eq!(
            Step::from_cursor(&before.cursor(), day(2020, 1, 1), day(2026, 12, 2)),
            Some(Step::Usage(day(2020, 1, 1)))
        );
    }

    #[test]
    fn a_forged_cursor_is_refused_before_any_store_sees_it() {
        let long = "x".repeat(super::MAX_INNER_CURSOR + 1);
        for bad in [
            String::new(),
            "not base64 !".into(),
            encoded(r#"{"s":"header"}"#),
            encoded(r#"{"s":"done"}"#),
            encoded(r#"{"s":"ledger","c":"not-a-ulid"}"#),
            encoded(&format!(r#"{{"s":"messages","c":"{long}"}}"#)),
            encoded(r#"{"s":"messages","c":"with space"}"#),
            encoded(r#"{"s":"messages","c":""}"#),
            encoded(r#"{"s":"audit","c":-1}"#),
            // A day far out of range (chrono's `+` on it would overflow), or out of the
            // retention, or ahead of today.
            encoded(r#"{"s":"usage","c":"+262142-06-01"}"#),
            encoded(r#"{"s":"usage","c":"-262143-01-01"}"#),
            encoded(r#"{"s":"usage","c":"2019-11-30"}"#),
            encoded(r#"{"s":"usage","c":"2026-12-03"}"#),
        ] {
            assert_eq!(
                Step::from_cursor(&bad, day(2020, 1, 1), day(2026, 12, 2)),
                None,
                "{bad}"
            );
        }
    }
}
