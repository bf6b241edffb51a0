//! Heavy routes (README "Limits"): at most one request of a tenant whose work grows with
//! its data is in flight at a time per class (the account-wide admin routes; a campaign's
//! routes), across every instance (a lease in the store, A75); another of the class
//! meanwhile is `429 rate_limited` with `Retry-After`, its message naming the class in
//! flight; the other class, another tenant's and light routes are not held. On both
//! backends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, Response};
use kirim::config::Backend;
use kirim::domain::TenantId;
use kirim::ports::{Heavy, HeavyLease};
use kirim::service::Deps;
use kirim_tests::{spawn_app, ManualClock, TestApp};
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::stepped_audit::{Stepped, Steps};

/// A request through admin_api's router (it serves the send API's routes too) on `deps`:
/// its answer, its body not read yet.
async fn request(deps: &Deps, method: &str, path: &str, key: &str) -> Response<Body> {
    kirim::http::admin_api_router(deps.clone())
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

/// [`request`], read whole: status, headers and body (JSON, or `Null`).
async fn call(deps: &Deps, method: &str, path: &str, key: &str) -> (u16, HeaderMap, Value) {
    read(request(deps, method, path, key).await).await
}

async fn read(res: Response<Body>) -> (u16, HeaderMap, Value) {
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status.as_u16(), parts.headers, body)
}

/// What a refusal for the lease of `class` says is in flight (its code and `Retry-After`
/// are those of any limit on use).
fn in_flight(class: Heavy) -> &'static str {
    match class {
        Heavy::Account => {
            "another account-wide export, audit verification or template sync is in progress; \
             retry after the number of seconds in Retry-After"
        }
        Heavy::Campaign => {
            "another download of this account's campaign recipients is in progress; \
             retry after the number of seconds in Retry-After"
        }
        Heavy::Retry => {
            "another retry of failed campaign messages is in progress; \
             retry after the number of seconds in Retry-After"
        }
        Heavy::Platform => {
            "another platform audit verification is in progress; \
             retry after the number of seconds in Retry-After"
        }
    }
}

/// A heavy request refused for its tenant's lease of `class`: the documented shape of any
/// limit on use (API.md "Errors"), a wait of 1 to 5 s, and a message naming what is in
/// flight.
fn assert_refused_for_the_lease((status, headers, body): &(u16, HeaderMap, Value), class: Heavy) {
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["message"], in_flight(class), "{body}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "{wait}");
}

/// Holds the first audit head read (a verification's) until let go.
#[derive(Clone, Default)]
struct HoldFirstHeadRead {
    held: Arc<AtomicBool>,
    entered: Arc<Notify>,
    go: Arc<Notify>,
}

#[async_trait::async_trait]
impl Steps for HoldFirstHeadRead {
    async fn after_head_read(&self) {
        if !self.held.swap(true, Ordering::SeqCst) {
            self.entered.notify_one();
            self.go.notified().await;
        }
    }
}

async fn two_concurrent_verifies_of_one_tenant_answer_one_200_and_one_429(b: Backend) {
    let app = spawn_app(b).await;
    let (t, other) = (app.onboard(5).await, app.onboard(5).await);
    let hold = HoldFirstHeadRead::default();
    let mut deps = app.app.deps.clone();
    deps.audit = Arc::new(Stepped {
        inner: app.app.deps.audit.clone(),
        steps: hold.clone(),
    });
    let first = {
        let (deps, key) = (deps.clone(), t.key.clone());
        tokio::spawn(async move { call(&deps, "GET", "/v1/audit/verify", &key).await })
    };
    hold.entered.notified().await;
    // The first is under way (its chain's head read): a second of the same tenant waits.
    assert_refused_for_the_lease(
        &call(&deps, "GET", "/v1/audit/verify", &t.key).await,
        Heavy::Account,
    );
    // Another tenant's heavy request, and the tenant's light ones, are not held.
    let (status, _, report) = call(&deps, "GET", "/v1/audit/verify", &other.key).await;
    assert_eq!(
        (status, &report["valid"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
    assert_eq!(call(&deps, "GET", "/v1/audit", &t.key).await.0, 200);
    assert_eq!(call(&deps, "GET", "/v1/account", &t.key).await.0, 200);
    hold.go.notify_one();
    let (status, _, report) = first.await.unwrap();
    assert_eq!(
        (status, &report["valid"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
    // Once it has answered, the next goes.
    assert_eq!(call(&deps, "GET", "/v1/audit/verify", &t.key).await.0, 200);
}

/// The export streams its pages after its handler returned: its lease is held until its
/// body has been read to the end, and given back then.
async fn an_export_holds_its_tenants_lease_until_its_body_has_been_read(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let export = request(deps, "GET", "/v1/account/export", &t.key).await;
    assert_eq!(export.status(), 200);
    assert_refused_for_the_lease(
        &call(deps, "GET", "/v1/audit/verify", &t.key).await,
        Heavy::Account,
    );
    assert_refused_for_the_lease(
        &call(deps, "GET", "/v1/account/export", &t.key).await,
        Heavy::Account,
    );
    let body = axum::body::to_bytes(export.into_body(), usize::MAX)
        .await
        .unwrap();
    let last = String::from_utf8_lossy(&body)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(last, r#"{"type":"end"}"#);
    assert_eq!(call(deps, "GET", "/v1/audit/verify", &t.key).await.0, 200);
}

/// An answer whose body is whole when its handler returns (verify's JSON, of a known
/// length) gives its lease back before it is returned: a client that reads the
/// `Content-Length`'s bytes and calls again at once is not refused by its own finished
/// call (on a real server the body is polled past its last byte only after the client
/// has all of it).
async fn a_finished_verify_holds_no_lease_once_answered_even_before_its_body_is_read(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let first = request(deps, "GET", "/v1/audit/verify", &t.key).await;
    assert_eq!(first.status(), 200);
    assert!(
        axum::body::HttpBody::size_hint(first.body())
            .exact()
            .is_some(),
        "a whole body, of a known length"
    );
    // Its body not read yet: the next call goes.
    let (status, _, report) = call(deps, "GET", "/v1/audit/verify", &t.key).await;
    assert_eq!(
        (status, &report["valid"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
    let (status, _, report) = read(first).await;
    assert_eq!(
        (status, &report["valid"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
}

/// A heavy answer whose body is dropped unread (the client went away) gives its lease
/// back all the same, soon after.
async fn a_heavy_answer_dropped_unread_gives_its_lease_back(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let export = request(deps, "GET", "/v1/account/export", &t.key).await;
    assert_eq!(export.status(), 200);
    drop(export);
    for _ in 0..100 {
        if call(deps, "GET", "/v1/audit/verify", &t.key).await.0 == 200 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the lease of the dropped answer was never given back");
}

/// A heavy request whose handler's future is dropped mid-way (its client went away: hyper
/// drops the service future; or it panicked) gives its lease back all the same, soon
/// after, not at its expiry 30 s on.
async fn a_verify_whose_client_went_away_mid_way_gives_its_lease_back(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let hold = HoldFirstHeadRead::default();
    let mut deps = app.app.deps.clone();
    deps.audit = Arc::new(Stepped {
        inner: app.app.deps.audit.clone(),
        steps: hold.clone(),
    });
    let gone = {
        let (deps, key) = (deps.clone(), t.key.clone());
        tokio::spawn(async move { call(&deps, "GET", "/v1/audit/verify", &key).await })
    };
    hold.entered.notified().await;
    assert_refused_for_the_lease(
        &call(&deps, "GET", "/v1/audit/verify", &t.key).await,
        Heavy::Account,
    );
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    for _ in 0..100 {
        if call(&deps, "GET", "/v1/audit/verify", &t.key).await.0 == 200 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the lease of the dropped verify was never given back");
}

/// A campaign's `recipients.csv` (open to every role), its `retry-failed` (operators) and
/// the admin's account-wide routes hold separate leases: a download in flight refuses
/// another download but not an operator's retry, nor the admin's verify or export, and a
/// retry in flight refuses another retry but not a download.
async fn a_campaign_download_in_flight_holds_neither_a_retry_nor_the_admins_verify_or_export(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let tenant = TenantId::parse(&t.tenant_id).unwrap();
    let now = kirim::ports::Clock::now(&*deps.clock);
    assert_eq!(
        deps.heavy_leases
            .acquire_heavy_lease(
                &tenant,
                Heavy::Campaign,
                "recipients.csv in flight",
                now,
                now + chrono::Duration::seconds(30),
                now + chrono::Duration::seconds(35),
            )
            .await
            .unwrap(),
        HeavyLease::Taken
    );
    let unknown = kirim::domain::new_id();
    let csv = format!("/v1/broadcasts/{unknown}/recipients.csv");
    let retry = format!("/v1/broadcasts/{unknown}/retry-failed");
    assert_refused_for_the_lease(&call(deps, "GET", &csv, &t.key).await, Heavy::Campaign);
    assert_eq!(
        call(deps, "POST", &retry, &t.key).await.0,
        404,
        "a retry is not held by a download"
    );
    let (status, _, report) = call(deps, "GET", "/v1/audit/verify", &t.key).await;
    assert_eq!(
        (status, &report["valid"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
    let export = request(deps, "GET", "/v1/account/export", &t.key).await;
    assert_eq!(export.status(), 200);
    // The export holds the account-wide lease while its body is unread: a second is
    // refused, the campaign's class is still its own holder's.
    assert_refused_for_the_lease(
        &call(deps, "GET", "/v1/audit/verify", &t.key).await,
        Heavy::Account,
    );
    deps.heavy_leases
        .release_heavy_lease(&tenant, Heavy::Campaign, "recipients.csv in flight")
        .await
        .unwrap();
    assert_eq!(call(deps, "GET", &csv, &t.key).await.0, 404);
    // A retry in flight holds the next retry, not a download.
    let now = kirim::ports::Clock::now(&*deps.clock);
    assert_eq!(
        deps.heavy_leases
            .acquire_heavy_lease(
                &tenant,
                Heavy::Retry,
                "retry-failed in flight",
                now,
                now + chrono::Duration::seconds(30),
                now + chrono::Duration::seconds(35),
            )
            .await
            .unwrap(),
        HeavyLease::Taken
    );
    assert_refused_for_the_lease(&call(deps, "POST", &retry, &t.key).await, Heavy::Retry);
    assert_eq!(call(deps, "GET", &csv, &t.key).await.0, 404);
    drop(export);
}

/// A heavy request its handler refuses (an unknown campaign's `recipients.csv`: `404`) has
/// no work left in its body: its lease goes back before its answer, whose body is not even
/// read yet when the next heavy request comes.
async fn a_heavy_request_its_handler_refuses_gives_its_lease_back_at_once(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let unknown = format!("/v1/broadcasts/{}/recipients.csv", kirim::domain::new_id());
    let refused = request(deps, "GET", &unknown, &t.key).await;
    assert_eq!(refused.status(), 404);
    assert_eq!(call(deps, "GET", "/v1/audit/verify", &t.key).await.0, 200);
    assert_eq!(read(refused).await.2["error"]["code"], "not_found");
}

/// A heavy request whose process died never gives its lease back: the tenant's next one
/// is refused until the lease lapses (30 s on), and then takes it over.
async fn a_lease_whose_process_died_is_taken_over_once_it_lapses(b: Backend) {
    let clock = ManualClock::new();
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.clock = kirim_infra::local::LocalClock(clock.clone());
    let app: TestApp = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let tenant = TenantId::parse(&t.tenant_id).unwrap();
    let now = kirim::ports::Clock::now(&*clock);
    assert_eq!(
        deps.heavy_leases
            .acquire_heavy_lease(
                &tenant,
                Heavy::Account,
                "died",
                now,
                now + chrono::Duration::seconds(30),
                now + chrono::Duration::seconds(35),
            )
            .await
            .unwrap(),
        HeavyLease::Taken
    );
    let refused = call(deps, "GET", "/v1/audit/verify", &t.key).await;
    assert_refused_for_the_lease(&refused, Heavy::Account);
    assert_eq!(
        refused.1["retry-after"], "5",
        "30 s to its lapse, told at most 5"
    );
    clock.advance(chrono::Duration::seconds(29));
    assert_refused_for_the_lease(
        &call(deps, "GET", "/v1/audit/verify", &t.key).await,
        Heavy::Account,
    );
    clock.advance(chrono::Duration::seconds(2));
    let (status, _, report) = call(deps, "GET", "/v1/audit/verify", &t.key).await;
    assert_eq!(
        (status, &report["valid"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
}

/// The platform chain's verification holds the platform's own lease: a second meanwhile is
/// `429`, a tenant's verification is not held by it (nor does it hold it).
async fn two_concurrent_platform_verifies_answer_one_200_and_one_429_and_hold_no_tenant(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let hold = HoldFirstHeadRead::default();
    let mut deps = app.app.deps.clone();
    deps.audit = Arc::new(Stepped {
        inner: app.app.deps.audit.clone(),
        steps: hold.clone(),
    });
    let op = kirim_tests::OPERATOR_TOKEN;
    let first = {
        let deps = deps.clone();
        tokio::spawn(async move { call(&deps, "GET", "/v1/platform/audit/verify", op).await })
    };
    hold.entered.notified().await;
    assert_refused_for_the_lease(
        &call(&deps, "GET", "/v1/platform/audit/verify", op).await,
        Heavy::Platform,
    );
    // A tenant's heavy routes and the platform chain's list are not held.
    let (status, _, report) = call(&deps, "GET", "/v1/audit/verify", &t.key).await;
    assert_eq!(
        (status, &report["valid"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
    assert_eq!(call(&deps, "GET", "/v1/platform/audit", op).await.0, 200);
    hold.go.notify_one();
    let (status, _, report) = first.await.unwrap();
    assert_eq!(
        (status, &report["valid"]),
        (200, &Value::Bool(true)),
        "{report}"
    );
    assert_eq!(
        call(&deps, "GET", "/v1/platform/audit/verify", op).await.0,
        200
    );
}

/// Each class's refusal says what is in flight, in its own words (the account-wide
/// routes', a campaign download's, a campaign retry's, the platform verification's): a
/// person told to wait knows what for. Code, status and `Retry-After` stay those of any
/// limit on use.
async fn a_heavy_refusal_names_the_class_of_the_request_in_flight(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let tenant = TenantId::parse(&t.tenant_id).unwrap();
    let now = kirim::ports::Clock::now(&*deps.clock);
    for (holder, class) in [
        (&tenant, Heavy::Account),
        (&tenant, Heavy::Campaign),
        (&tenant, Heavy::Retry),
        (&kirim::ports::platform_holder(), Heavy::Platform),
    ] {
        assert_eq!(
            deps.heavy_leases
                .acquire_heavy_lease(
                    holder,
                    class,
                    "in flight",
                    now,
                    now + chrono::Duration::seconds(30),
                    now + chrono::Duration::seconds(35),
                )
                .await
                .unwrap(),
            HeavyLease::Taken
        );
    }
    let campaign = kirim::domain::new_id();
    let op = kirim_tests::OPERATOR_TOKEN;
    for (method, path, key, class) in [
        (
            "GET",
            "/v1/account/export".to_owned(),
            &*t.key,
            Heavy::Account,
        ),
        (
            "GET",
            "/v1/audit/verify".to_owned(),
            &*t.key,
            Heavy::Account,
        ),
        (
            "POST",
            "/v1/templates/sync".to_owned(),
            &*t.key,
            Heavy::Account,
        ),
        (
            "GET",
            format!("/v1/broadcasts/{campaign}/recipients.csv"),
            &*t.key,
            Heavy::Campaign,
        ),
        (
            "POST",
            format!("/v1/broadcasts/{campaign}/retry-failed"),
            &*t.key,
            Heavy::Retry,
        ),
        (
            "GET",
            "/v1/platform/audit/verify".to_owned(),
            op,
            Heavy::Platform,
        ),
    ] {
        let refused = call(deps, method, &path, key).await;
        assert_eq!(
            refused.2["error"]["message"],
            in_flight(class),
            "{method} {path}"
        );
        assert_refused_for_the_lease(&refused, class);
    }
}

on_both_backends!(
    a_heavy_refusal_names_the_class_of_the_request_in_flight,
    two_concurrent_verifies_of_one_tenant_answer_one_200_and_one_429,
    two_concurrent_platform_verifies_answer_one_200_and_one_429_and_hold_no_tenant,
    an_export_holds_its_tenants_lease_until_its_body_has_been_read,
    a_heavy_answer_dropped_unread_gives_its_lease_back,
    a_finished_verify_holds_no_lease_once_answered_even_before_its_body_is_read,
    a_verify_whose_client_went_away_mid_way_gives_its_lease_back,
    a_heavy_request_its_handler_refuses_gives_its_lease_back_at_once,
    a_campaign_download_in_flight_holds_neither_a_retry_nor_the_admins_verify_or_export,
    a_lease_whose_process_died_is_taken_over_once_it_lapses,
);
