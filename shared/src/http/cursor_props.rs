//! Property tests of pagination cursors as the HTTP API takes them (issue 14), end to
//! end on the memory backend: `GET /v1/messages` (also one campaign's,
//! `?broadcast_id=`), `/v1/opt-outs` and `/v1/audit` with a
//! `cursor` the client made up answer `200` or `400 invalid_request` (never a 5xx, never
//! a panic; `400` for anything the backend could not have issued) and never show another
//! tenant's messages, opt-outs or audit events; and the cursors the API hands out walk a
//! tenant's whole list exactly once.
//! (The DynamoDB adapter's cursors: `adapters::aws::dynamodb::cursor_props`.)

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::config::Settings;
use crate::domain::{MessageId, PhoneNumber, TenantId};
use crate::ports::SystemClock;
use crate::props::{self, re};
use crate::service::accounts::{self, NewTenant};
use crate::service::Deps;

/// One app with two tenants, each with messages, opt-outs and audit events.
struct World {
    rt: tokio::runtime::Runtime,
    deps: Deps,
    app: Router,
    key: String,
    messages: BTreeSet<String>,
    phones: BTreeSet<String>,
    events: BTreeSet<String>,
    /// A campaign of the tenant's and its messages (also in `messages`).
    campaign: String,
    campaign_messages: BTreeSet<String>,
    /// The other tenant's: ids and numbers that must never show.
    foreign: Vec<String>,
}

struct Tenant {
    id: TenantId,
    key: String,
    messages: BTreeSet<String>,
    phones: BTreeSet<String>,
}

impl World {
    async fn call(&self, key: &str, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(if body.is_null() {
                Body::empty()
            } else {
                Body::from(body.to_string())
            })
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn get(&self, key: &str, uri: &str) -> (StatusCode, Value) {
        self.rt
            .block_on(self.call(key, Method::GET, uri, Value::Null))
    }

    async fn tenant(&self, n: u32, messages: u32, phones: u32) -> Tenant {
        let (created, key) = accounts::create_tenant(
            &self.deps,
            NewTenant {
                name: format!("tenant {n}"),
                waba_id: format!("100{n}"),
                phone_number_id: format!("200{n}"),
                meta_access_token: "token".into(),
                credits: Some(1_000),
                display_phone_number: None,
            },
        )
        .await
        .unwrap();
        let key = key.expose().to_owned();
        let mut t = Tenant {
            id: created.id.clone(),
            key,
            messages: BTreeSet::new(),
            phones: BTreeSet::new(),
        };
        for i in 0..messages {
            let to = format!("+6012{n}{i:06}");
            // The user wrote first: a session text is within the 24-hour window.
            let from = crate::domain::OptOutKey::parse(&to).unwrap();
            crate::service::contacts::user_wrote(
                &self.deps,
                &created.id,
                &format!("200{n}"),
                &[from],
                None,
            )
            .await
            .unwrap();
            let body = json!({"to": to, "text": {"body": "hi"}});
            let (status, v) = self.call(&t.key, Method::POST, "/v1/messages", body).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{v}");
            t.messages.insert(v["id"].as_str().unwrap().to_owned());
        }
        for i in 0..phones {
            let phone = format!("+6019{n}{i:06}");
            let uri = format!("/v1/opt-outs/%2B{}", &phone[1..]);
            let (status, v) = self.call(&t.key, Method::PUT, &uri, Value::Null).await;
            assert!(status.is_success(), "{status} {v}");
            t.phones.insert(phone);
        }
        t
    }
}

fn world() -> World {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Hundreds of requests from one key: above the default limit on use.
    let mut settings = Settings::default();
    settings.limits.key = crate::domain::RequestLimits {
        requests_per_sec: 10_000,
        burst: 20_000,
    };
    let deps = crate::wiring::memory_deps(settings, Arc::new(SystemClock)).unwrap();
    let app = super::app(deps.clone(), Router::new()).into();
    let mut w = World {
        rt,
        deps,
        app,
        key: String::new(),
        messages: BTreeSet::new(),
        phones: BTreeSet::new(),
        events: BTreeSet::new(),
        campaign: String::new(),
        campaign_messages: BTreeSet::new(),
        foreign: Vec::new(),
    };
    let (mut a, b) =
        w.rt.block_on(async { (w.tenant(1, 9, 7).await, w.tenant(2, 6, 5).await) });
    let model = a.messages.iter().next().cloned().unwrap_or_default();
    (w.campaign, w.campaign_messages) = w.rt.block_on(campaign(&w.deps, &a.id, &model, 7));
    a.messages.extend(w.campaign_messages.iter().cloned());
    let events = |key: &str| -> BTreeSet<String> {
        let (status, v) = w.get(key, "/v1/audit?limit=100");
        assert_eq!(status, StatusCode::OK, "{v}");
        let ids: BTreeSet<String> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(v["next_cursor"].is_null() && !ids.is_empty());
        ids
    };
    let (a_events, b_events) = (events(&a.key), events(&b.key));
    w.foreign = b
        .messages
        .into_iter()
        .chain(b.phones)
        .chain(b_events)
        .collect();
    w.key = a.key;
    w.messages = a.messages;
    w.phones = a.phones;
    w.events = a_events;
    w
}

/// Cursors a client might send: its own ids and numbers (any case), the other tenant's,
/// numbers of any size, and anything.
fn cursor(w: &World) -> BoxedStrategy<String> {
    let own: Vec<String> = w.messages.iter().chain(&w.phones).cloned().collect();
    prop_oneof![
        prop::sample::select(own.clone()),
        prop::sample::select(own).prop_map(|s| s.to_lowercase()),
        prop::sample::select(w.foreign.clone()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        Just("18446744073709551616".to_owned()),
        re("[A-Za-z0-9_=+/-]{0,60}"),
        re("\\PC{0,30}"),
    ]
    .boxed()
}

fn encoded(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The `field` of each item of `list` in a page.
fn items(v: &Value, list: &str, field: &str) -> Vec<String> {
    v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A campaign of the tenant's with `n` messages (copies of `model`, with the campaign's
/// ids): its id and its messages' ids.
async fn campaign(
    deps: &Deps,
    tenant: &TenantId,
    model: &str,
    n: usize,
) -> (String, BTreeSet<String>) {
    use crate::ports::{Broadcast, BroadcastStatus, LedgerEntry, LedgerKind};
    let model = MessageId::parse(model).unwrap();
    let model = deps
        .messages
        .get_message(tenant, &model)
        .await
        .unwrap()
        .unwrap();
    let now = chrono::Utc::now();
    let b = Broadcast {
        id: crate::domain::new_id(),
        tenant_id: tenant.clone(),
        template: crate::domain::TemplateRef {
            name: "promo".into(),
            language: "en".into(),
            category: crate::domain::TemplateCategory::Utility,
        },
        accepted: n,
        skipped_opted_out: 0,
        invalid: 0,
        duplicates: 0,
        price_each: 0,
        status: BroadcastStatus::FanningOut,
        enqueued: n,
        created_at: now,
        expires_at: None,
        name: None,
        from: None,
        send_at: None,
        started_at: Some(now),
        ended_at: None,
        control: None,
        retry_of: None,
        retried_by: None,
        refunded_unsent: 0,
        closed_unqueued: 0,
        control_at: None,
        fanout_token: None,
    };
    let debit = LedgerEntry {
        id: crate::domain::new_id(),
        tenant_id: tenant.clone(),
        amount: 0,
        kind: LedgerKind::Debit,
        reference: Some(format!("broadcast {}", b.id)),
        message_id: None,
        at: now,
        expires_at: None,
    };
    deps.broadcasts
        .create_broadcast(&b, &[], &debit)
        .await
        .unwrap();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let mut m = model.clone();
        m.id = crate::service::broadcasts::message_id(&b, i);
        m.broadcast_id = Some(b.id.clone());
        assert!(deps.broadcasts.insert_broadcast_message(&m).await.unwrap());
        ids.insert(m.id.to_string());
    }
    (b.id, ids)
}

/// The lists: path (and query), the page's list and the field each item is known by.
fn lists(w: &World) -> [(String, &'static str, &'static str); 4] {
    [
        ("/v1/messages?".into(), "messages", "id"),
        (
            format!("/v1/messages?broadcast_id={}&", w.campaign),
            "messages",
            "id",
        ),
        ("/v1/opt-outs?".into(), "opt_outs", "phone"),
        ("/v1/audit?".into(), "events", "id"),
    ]
}

#[test]
fn a_made_up_cursor_is_answered_200_or_400_and_never_shows_another_tenant_s_items() {
    let w = world();
    let mut runner = TestRunner::new(props::config(600));
    let result = runner.run(&(cursor(&w), 1usize..=100), |(c, limit)| {
        for (path, list, field) in lists(&w) {
            let uri = format!("{path}limit={limit}&cursor={}", encoded(&c));
            let (status, v) = w.get(&w.key, &uri);
            let campaign = path.contains("broadcast_id");
            // What the memory backend hands out: the last message id, phone number or
            // audit sequence number of a page. Anything else is not a cursor of ours; nor
            // is anything here one of the campaign's (its tenant, list and a position).
            let could_be_ours = match list {
                _ if campaign => false,
                "messages" => MessageId::parse(&c).is_some(),
                "opt_outs" => PhoneNumber::parse_stored(&c).is_ok(),
                _ => c.parse::<u64>().is_ok(),
            };
            if !could_be_ours {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}: {}", uri, v);
            }
            match status {
                StatusCode::OK => {
                    let own = match list {
                        _ if campaign => &w.campaign_messages,
                        "messages" => &w.messages,
                        "opt_outs" => &w.phones,
                        _ => &w.events,
                    };
                    for item in items(&v, list, field) {
                        prop_assert!(own.contains(&item), "{uri} showed {item}");
                    }
                }
                StatusCode::BAD_REQUEST => {
                    prop_assert_eq!(&v["error"]["code"], "invalid_request", "{}", uri);
                }
                s => prop_assert!(false, "{uri} answered {s}: {v}"),
            }
            let text = v.to_string();
            for f in &w.foreign {
                prop_assert!(!text.contains(f.as_str()), "{uri} showed {f}");
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn the_cursors_the_api_hands_out_walk_each_list_exactly_once_in_order() {
    let w = world();
    let mut runner = TestRunner::new(props::config(60));
    let result = runner.run(&(1usize..=4), |limit| {
        for (path, list, field) in lists(&w) {
            let mut seen = Vec::new();
            let mut next: Option<String> = None;
            loop {
                let mut uri = format!("{path}limit={limit}");
                if let Some(c) = &next {
                    uri.push_str(&format!("&cursor={}", encoded(c)));
                }
                let (status, v) = w.get(&w.key, &uri);
                prop_assert_eq!(status, StatusCode::OK, "{}: {}", uri, v);
                let page = items(&v, list, field);
                prop_assert!(page.len() <= limit);
                seen.extend(page);
                next = v["next_cursor"].as_str().map(str::to_owned);
                if next.is_none() {
                    break;
                }
                prop_assert!(seen.len() <= 100, "{} never ends", path);
            }
            let expected: Vec<String> = match list {
                // A campaign's: in id order (as its `recipients.csv`).
                _ if path.contains("broadcast_id") => w.campaign_messages.iter().cloned().collect(),
                // Newest first.
                "messages" => w.messages.iter().rev().cloned().collect(),
                // By number.
                "opt_outs" => w.phones.iter().cloned().collect(),
                // Newest first; the set is what matters (ids are not in time order).
                _ => {
                    let got: BTreeSet<String> = seen.iter().cloned().collect();
                    prop_assert_eq!(got.len(), seen.len(), "an audit event twice");
                    prop_assert_eq!(&got, &w.events);
                    continue;
                }
            };
            prop_assert_eq!(seen, expected, "{}", path);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
