//! `GET /v1/account/export` (admin): the tenant's retained metadata as JSON lines
//! (`application/x-ndjson`), one object per line with a `type` field: one `export` header,
//! then every `message`, `opt_out`, `audit_event`, `ledger_entry`, `phone_number` (as
//! `GET /v1/phone-numbers` shows it) and `usage_row` (as `GET /v1/usage` shows it, a year
//! of days at a time over the billing retention) still retained.
//!
//! It pages through the stores (100 items a page) while the body streams, so an export
//! never holds a tenant's whole history in memory. The lines are the API's own views:
//! never message content (none is stored) and never secrets (key hashes, secret names).
//! A storage error after the first line cannot change the status any more: the stream then
//! ends with a `{"type":"error"}` line, and a client must treat an export without the
//! closing `{"type":"end"}` line as incomplete.

use axum::body::{Body, Bytes};
use axum::extract::State;
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
            for o in &p.opt_outs {
                out.push_str(&line("opt_out", OptOutView::from(o)));
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
            // Usage rows are billing records: every day the billing retention keeps.
            let now = deps.clock.now();
            let kept_days = deps
                .settings
                .retention
                .expiry(RetentionClass::Billing, now)
                .map(|e| (e - now.timestamp()) / 86_400 + 1)
                .unwrap_or(3_660);
            Step::Usage(now.date_naive() - chrono::Duration::days(kept_days))
        }
        Step::Usage(from) => {
            let today = deps.clock.now().date_naive();
            let to = (from + chrono::Duration::days(USAGE_DAYS - 1)).min(today);
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

async fn export(State(s): State<AppState>, ctx: TenantCtx) -> Response {
    let deps = s.deps.clone();
    let tenant = ctx.tenant_id().clone();
    let body = stream::unfold(Some(Step::Header), move |step| {
        let deps = deps.clone();
        let tenant = tenant.clone();
        async move {
            let step = step?;
            if matches!(step, Step::Done) {
                return None;
            }
            match page(&deps, &tenant, step).await {
                Ok((text, next)) => Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from(text)),
                    Some(next),
                )),
                Err(e) => {
                    tracing::error!(tenant_id = %tenant, error = %e, "export stopped by a storage error");
                    let text = line("error", json!({"code": "unavailable"}));
                    Some((Ok(Bytes::from(text)), None))
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}
