//! The audit trail: what is recorded, the hash chain, its verification, tampering and
//! expiry, on both backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use kirim::config::Backend;
use kirim::domain::TenantId;
use kirim::ports::{AuditQuery, ParkedAudit};
use kirim::service::audit;
use kirim::store_error::StoreError;
use kirim_tests::{spawn_app, ManualClock, TestApp, OPERATOR_TOKEN};

use crate::stepped_audit::{draft_on, Stepped, Steps};
use serde_json::{json, Value};

pub(crate) async fn get(app: &TestApp, key: &str, path: &str) -> Value {
    app.http
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub(crate) fn actions(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

async fn sends_mutations_and_denials_are_audited_in_a_verifiable_chain(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123458888").await;
    let created: Value = app
        .http
        .post(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .json(&json!({"name": "reports", "role": "read_only"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ro = created["key"].as_str().unwrap().to_owned();
    // A denied call (role too low) and an operator action on the tenant.
    assert_eq!(app.send_template(&ro, "+60123458889").await.status(), 403);
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{}/credits", t.tenant_id)))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"amount": 7, "reference": "INV-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let page = get(&app, &t.key, "/v1/audit").await;
    let acts = actions(&page);
    assert_eq!(
        acts,
        vec![
            "POST /v1/platform/tenants/{id}/credits",
            "POST /v1/messages",
            "POST /v1/api-keys",
            "POST /v1/messages",
            "POST /v1/platform/tenants",
        ],
        "newest first: {page}"
    );
    let events = page["events"].as_array().unwrap();
    assert_eq!(
        events[0]["actor"],
        json!({"type": "operator", "id": "platform"})
    );
    assert_eq!(events[0]["details"]["reference"], "INV-7");
    assert_eq!(events[1]["outcome"], "denied");
    assert_eq!(events[1]["details"]["reason"], "forbidden");
    assert_eq!(events[1]["actor"]["id"], created["id"]);
    assert_eq!(events[3]["outcome"], "success");
    assert_eq!(events[3]["details"]["message_id"], id.as_str());
    assert_eq!(
        events[3]["details"]["to"], "+60****8888",
        "phone numbers masked"
    );
    assert_eq!(events[3]["ip"], "127.0.0.1");
    assert!(!page.to_string().contains("ORDER-42"), "no message content");
    assert!(!page.to_string().contains(&ro), "no secrets");
    for pair in events.windows(2) {
        assert_eq!(
            pair[0]["prev_hash"], pair[1]["hash"],
            "each event links to the one before"
        );
    }
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(v, json!({"valid": true, "checked": 5, "complete": true}));

    // Filters and cursor pagination.
    let sends = get(&app, &t.key, "/v1/audit?action=POST%20/v1/messages").await;
    assert_eq!(
        actions(&sends),
        vec!["POST /v1/messages", "POST /v1/messages"]
    );
    let p1 = get(&app, &t.key, "/v1/audit?limit=2").await;
    assert_eq!(p1["events"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
    let p2 = get(&app, &t.key, &format!("/v1/audit?limit=10&cursor={cursor}")).await;
    assert_eq!(actions(&p2).len(), 3);
    let future = get(&app, &t.key, "/v1/audit?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["events"], json!([]));
    // Another tenant sees none of it.
    let other = app.onboard(0).await;
    assert_eq!(
        actions(&get(&app, &other.key, "/v1/audit").await),
        vec!["POST /v1/platform/tenants"]
    );
}

async fn an_unknown_key_is_audited_on_the_platform_chain(b: Backend) {
    let app = spawn_app(b).await;
    let res = app
        .http
        .get(app.url("/v1/account"))
        .bearer_auth("kirim_guess")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let (events, _) = app
        .app
        .deps
        .audit
        .list(
            audit::PLATFORM_CHAIN,
            &AuditQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = events
        .iter()
        .find(|e| e.action == "GET /v1/account")
        .expect("denial recorded");
    assert_eq!(
        (e.outcome.as_str(), e.actor_type.as_str()),
        ("denied", "anonymous")
    );
    assert!(
        !format!("{e:?}").contains("kirim_guess"),
        "the presented token is not recorded"
    );
}

/// The operator's call about a tenant already closed out (a repeated close, a late top-up)
/// is recorded on the platform chain, naming the tenant: the tenant's chain had its last
/// expiry from the close-out, and an event there after it would outlive it (or begin a
/// chain again with none once its head has expired).
async fn an_operators_call_about_a_closed_out_tenant_is_recorded_on_the_platform_chain(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let op = |method: reqwest::Method, path: String| {
        let app = &app;
        async move {
            app.http
                .request(method, app.url(&path))
                .bearer_auth(kirim_tests::OPERATOR_TOKEN)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let close = format!("/v1/platform/tenants/{}", t.tenant_id);
    assert_eq!(op(reqwest::Method::DELETE, close.clone()).await, 200);
    assert_eq!(
        op(reqwest::Method::POST, "/v1/platform/retention/run".into()).await,
        200
    );
    let chain = t.tenant_id.clone();
    let before = app.app.deps.audit.head(&chain).await.unwrap();
    assert!(before.is_some(), "closed out with its chain");
    op(reqwest::Method::DELETE, close).await;
    assert_eq!(
        app.app.deps.audit.head(&chain).await.unwrap(),
        before,
        "the tenant's chain is not appended to"
    );
    let (events, _) = app
        .app
        .deps
        .audit
        .list(
            audit::PLATFORM_CHAIN,
            &AuditQuery {
                limit: 20,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "DELETE /v1/platform/tenants/{id}"
                && e.details.contains(&t.tenant_id)),
        "{events:?}"
    );
}

async fn concurrent_calls_produce_one_gapless_chain(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(50).await;
    let numbers: Vec<String> = (0..20)
        .map(|i| format!("+6012345{:04}", 2000 + i))
        .collect();
    let sends = numbers.iter().map(|n| app.send_template(&t.key, n));
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.status(), 202);
    }
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(v, json!({"valid": true, "checked": 21, "complete": true}));
}

async fn logins_are_audited_on_the_users_tenant_with_both_outcomes(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let user: Value = app.http.post(app.url("/v1/users")).bearer_auth(&t.key)
        .json(&json!({"email": "siti@kedai.example", "role": "operator", "password": "correct horse battery"}))
        .send().await.unwrap().json().await.unwrap();
    let login = |password: &'static str| {
        app.http
            .post(app.url("/v1/auth/login"))
            .json(&json!({"email": "siti@kedai.example", "password": password}))
            .send()
    };
    assert_eq!(login("wrong password here").await.unwrap().status(), 401);
    assert_eq!(login("correct horse battery").await.unwrap().status(), 200);
    let page = get(&app, &t.key, "/v1/audit?action=POST%20/v1/auth/login").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{page}");
    assert_eq!(events[0]["outcome"], "success");
    assert_eq!(events[0]["details"]["result"], "ok");
    assert_eq!(
        events[0]["actor"],
        json!({"type": "user", "id": user["id"]})
    );
    assert_eq!(events[1]["outcome"], "denied");
    assert_eq!(events[1]["details"]["result"], "invalid_credentials");
    assert!(
        !page.to_string().contains("correct horse"),
        "never the password"
    );
}

/// "Who added, removed or changed whom": a user's creation names the user and the role,
/// its deletion the user, the tenant's 2FA requirement what it was set to.
async fn user_and_2fa_changes_are_audited_with_what_they_changed(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let user: Value = app.http.post(app.url("/v1/users")).bearer_auth(&t.key)
        .json(&json!({"email": "ali@kedai.example", "role": "read_only", "password": "correct horse battery"}))
        .send().await.unwrap().json().await.unwrap();
    let id = user["id"].as_str().unwrap_or_default().to_owned();
    let res = app
        .http
        .delete(app.url(&format!("/v1/users/{id}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .http
        .put(app.url("/v1/settings/2fa"))
        .bearer_auth(&t.key)
        .json(&json!({"required": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = get(&app, &t.key, "/v1/audit?action=POST%20/v1/users").await;
    let created = &page["events"][0]["details"];
    assert_eq!(
        (created["user_id"].as_str(), created["role"].as_str()),
        (Some(id.as_str()), Some("read_only")),
        "{page}"
    );
    assert!(!page.to_string().contains("ali@kedai"), "never the email");
    let page = get(&app, &t.key, "/v1/audit?action=DELETE%20/v1/users/%7Bid%7D").await;
    assert_eq!(
        page["events"][0]["details"]["user_id"],
        id.as_str(),
        "{page}"
    );
    let page = get(&app, &t.key, "/v1/audit?action=PUT%20/v1/settings/2fa").await;
    assert_eq!(page["events"][0]["details"]["required"], true, "{page}");
}

/// An audit log whose next `failures` appends (event writes) fail with `error`
/// (contention or an outage), and whose next `head_failures` head writes do; everything
/// else goes to the real one.
struct Failing {
    failures: AtomicUsize,
    head_failures: AtomicUsize,
    error: StoreError,
}

fn take(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl Steps for Failing {
    async fn before_event(&self) -> Result<(), StoreError> {
        match take(&self.failures) {
            true => Err(self.error.clone()),
            false => Ok(()),
        }
    }
    async fn before_head(&self) -> Result<(), StoreError> {
        match take(&self.head_failures) {
            true => Err(self.error.clone()),
            false => Ok(()),
        }
    }
}

pub(crate) fn failing(app: &TestApp, failures: usize, error: StoreError) -> kirim::service::Deps {
    let mut deps = app.app.deps.clone();
    deps.audit = Arc::new(Stepped {
        inner: deps.audit.clone(),
        steps: Failing {
            failures: AtomicUsize::new(failures),
            head_failures: AtomicUsize::new(0),
            error,
        },
    });
    deps
}

/// A process whose head writes fail (`Unavailable`) after its event writes succeed: as if
/// it crashed between its two writes.
pub(crate) fn head_write_failing(app: &TestApp) -> kirim::service::Deps {
    let mut deps = app.app.deps.clone();
    deps.audit = Arc::new(Stepped {
        inner: deps.audit.clone(),
        steps: Failing {
            failures: AtomicUsize::new(0),
            head_failures: AtomicUsize::new(usize::MAX),
            error: StoreError::Unavailable("throttled".into()),
        },
    });
    deps
}

fn draft(t: &kirim_tests::Onboarded, action: &str) -> audit::Draft {
    draft_on(&TenantId::parse(&t.tenant_id).unwrap(), action)
}

async fn an_event_the_chain_cannot_take_is_parked_and_linked_in_by_the_next_append_in_order(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    // A contended chain (every attempt loses) and then an outage.
    let contended = failing(
        &app,
        usize::MAX,
        StoreError::Conflict("audit chain moved".into()),
    );
    audit::record_or_park(&contended, draft(&t, "POST /v1/first")).await;
    let down = failing(&app, 1, StoreError::Unavailable("throttled".into()));
    audit::record_or_park(&down, draft(&t, "POST /v1/second")).await;
    // Not in the chain yet, and verification says so (and since when: the real clock).
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(
        (&v["valid"], &v["checked"], &v["parked"]),
        (&json!(true), &json!(1), &json!(2)),
        "{v}"
    );
    assert!(
        v["oldest_parked_age_seconds"]
            .as_i64()
            .is_some_and(|s| s >= 0),
        "{v}"
    );
    // The chain's next append (a send through the API) links both in first, in order.
    app.send_ok(&t.key, "+60123450300").await;
    let page = get(&app, &t.key, "/v1/audit").await;
    assert_eq!(
        actions(&page),
        vec![
            "POST /v1/messages",
            "POST /v1/second",
            "POST /v1/first",
            "POST /v1/platform/tenants"
        ]
    );
    // Parked signed with the audit key: linked as they were, unmarked.
    for e in page["events"].as_array().unwrap() {
        assert!(e["details"].get("parked_unsigned").is_none(), "{e}");
    }
    assert_eq!(
        get(&app, &t.key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 4, "complete": true})
    );
}

/// A tenant that stops calling: nothing appends to its chain again, so only the scheduled
/// retention job can link its parked event in; until then verify says one waits, and for
/// how long.
async fn an_event_parked_on_a_chain_nobody_appends_to_is_linked_in_by_the_retention_job(
    b: Backend,
) {
    let clock = ManualClock::new();
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.clock = kirim_infra::local::LocalClock(clock.clone());
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(5).await;
    let contended = failing(
        &app,
        usize::MAX,
        StoreError::Conflict("audit chain moved".into()),
    );
    audit::record_or_park(&contended, draft(&t, "POST /v1/quiet")).await;
    clock.advance(chrono::Duration::hours(1));
    assert_eq!(
        get(&app, &t.key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 1, "complete": true, "parked": 1, "oldest_parked_age_seconds": 3600}),
        "not silently valid while an event waits"
    );

    let report = kirim::queue_handlers::scheduled_retention(&app.app.deps)
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&report.audit_parked).unwrap(),
        json!({"chains": 1, "linked": 1, "still_parked": 0, "complete": true})
    );
    assert_eq!(
        actions(&get(&app, &t.key, "/v1/audit").await),
        vec!["POST /v1/quiet", "POST /v1/platform/tenants"],
        "in the chain, after what was there"
    );
    assert_eq!(
        get(&app, &t.key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 2, "complete": true}),
        "verified and counted, nothing waits"
    );
    // A second run finds nothing to do.
    let again = kirim::queue_handlers::scheduled_retention(&app.app.deps)
        .await
        .unwrap();
    assert_eq!(
        (again.audit_parked.chains, again.audit_parked.linked),
        (0, 0)
    );
}

/// The same store and secrets as the app, as another process sees them: its own memory of
/// heads and its own turns at the chains (so its appends race the app's).
fn another_process(app: &TestApp) -> kirim::service::Deps {
    let mut deps = app.app.deps.clone();
    deps.audit_heads = Arc::new(audit::HeadMemo::new(std::time::Duration::from_secs(5)));
    deps
}

async fn an_event_left_beyond_its_head_is_listed_verified_as_in_flight_and_anchored_by_the_next_append(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let deps = &app.app.deps;
    let t = app.onboard(5).await;
    let chain = t.tenant_id.clone();
    // The event is written, its head write fails every retry (a crash between the two).
    let crashed = head_write_failing(&app);
    let e = audit::record(&crashed, draft(&t, "POST /v1/in-flight"))
        .await
        .unwrap();
    assert_eq!(e.seq, 2);
    let head = deps.audit.head(&chain).await.unwrap().unwrap();
    assert_eq!(head.seq, 1, "the head stays one behind");
    assert_eq!(
        actions(&get(&app, &t.key, "/v1/audit").await),
        vec!["POST /v1/in-flight", "POST /v1/platform/tenants"],
        "listed while in flight"
    );
    assert_eq!(
        get(&app, &t.key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 1, "complete": true}),
        "in flight is not a break, and not checked yet"
    );
    // Any process's next append anchors it first, then appends after it.
    audit::record(&another_process(&app), draft(&t, "POST /v1/next"))
        .await
        .unwrap();
    assert_eq!(deps.audit.head(&chain).await.unwrap().unwrap().seq, 3);
    assert_eq!(
        get(&app, &t.key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 3, "complete": true})
    );

    // A chain's first event is written with its head, in one transaction: never in flight.
    let tenant = TenantId::generate();
    audit::record(&crashed, draft_on(&tenant, "POST /v1/first"))
        .await
        .unwrap();
    assert_eq!(
        deps.audit
            .head(tenant.as_str())
            .await
            .unwrap()
            .map(|h| h.seq),
        Some(1)
    );
    let v = audit::verify(deps, &tenant, None).await.unwrap();
    assert_eq!((v.valid, v.checked), (true, 1), "{v:?}");
    audit::record(deps, draft_on(&tenant, "POST /v1/second"))
        .await
        .unwrap();
    let v = audit::verify(deps, &tenant, None).await.unwrap();
    assert_eq!((v.valid, v.checked), (true, 2), "{v:?}");
}

/// A crash between an append's two writes on a chain nobody appends to again (a tenant that
/// stopped calling): the retention run anchors the event, so its window unanchored ends.
async fn an_event_left_beyond_the_head_of_a_quiet_chain_is_anchored_by_the_retention_run(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let deps = &app.app.deps;
    let t = app.onboard(5).await;
    // A suspended tenant's chain too: its events are still audited (the operator's resume
    // among them), and a suspension may last.
    let paused = app.onboard(5).await;
    deps.tenants
        .set_status(
            &TenantId::parse(&paused.tenant_id).unwrap(),
            kirim::ports::TenantStatus::Suspended,
            Some("paused"),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    for tenant in [&t, &paused] {
        audit::record(&head_write_failing(&app), draft(tenant, "POST /v1/last"))
            .await
            .unwrap();
        assert_eq!(
            deps.audit
                .head(&tenant.tenant_id)
                .await
                .unwrap()
                .unwrap()
                .seq,
            1
        );
    }
    kirim::queue_handlers::scheduled_retention(deps)
        .await
        .unwrap();
    for tenant in [&t, &paused] {
        assert_eq!(
            deps.audit
                .head(&tenant.tenant_id)
                .await
                .unwrap()
                .unwrap()
                .seq,
            2,
            "anchored by the run"
        );
    }
    assert_eq!(
        get(&app, &t.key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 2, "complete": true})
    );
}

async fn an_event_beyond_the_head_that_does_not_verify_is_never_anchored_and_later_events_park(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let deps = &app.app.deps;
    let key = deps
        .secrets
        .current(&deps.settings.audit_key_secret)
        .await
        .unwrap()
        .expect("local mode has an audit key");
    for variant in [
        "unsigned",
        "signed with another key",
        "not linked to the head",
    ] {
        let tenant = TenantId::generate();
        let chain = tenant.to_string();
        audit::record(deps, draft_on(&tenant, "POST /v1/first"))
            .await
            .unwrap();
        let head = deps.audit.head(&chain).await.unwrap().unwrap();
        // Someone who can write the table, but has no audit key, adds an event after it.
        let mut forged = deps.audit.event(&chain, 1).await.unwrap().unwrap();
        forged.seq = 2;
        forged.id = kirim::domain::new_id();
        forged.action = "POST /v1/forged".into();
        forged.prev_hash = head.hash.clone();
        forged.prev_expires_at = head.expires_at;
        if variant == "not linked to the head" {
            forged.prev_hash = audit::GENESIS.into();
        }
        forged.hash = audit::hash_of(&forged);
        forged.signature = match variant {
            "unsigned" => None,
            "signed with another key" => {
                audit::event_signature(&kirim::secret::Secret::new("a guess"), &forged)
            }
            _ => audit::event_signature(&key, &forged),
        };
        deps.audit.put_event(&forged).await.unwrap();

        audit::record_or_park(deps, draft_on(&tenant, "POST /v1/after")).await;
        audit::record_or_park(
            &another_process(&app),
            draft_on(&tenant, "POST /v1/elsewhere"),
        )
        .await;
        assert!(
            audit::drain(deps, &chain).await.is_err(),
            "{variant}: the drain refuses too"
        );
        assert_eq!(
            deps.audit.head(&chain).await.unwrap(),
            Some(head.clone()),
            "{variant}: never anchored"
        );
        let v = audit::verify(deps, &tenant, None).await.unwrap();
        assert_eq!(
            (v.valid, v.checked, v.broken_at, v.parked),
            (false, 1, Some(2), 2),
            "{variant}: the chain stops there, later events wait parked: {v:?}"
        );
        assert_eq!(
            v.reason.as_deref(),
            Some("event 2 beyond the head does not verify: not the next link, or not written with the audit key"),
            "{variant}"
        );
    }
}

/// A rotated audit key (the usual reason: it leaked) vouches for what it signed only
/// while what it signed before the rotation may still be waiting (an event left beyond its
/// head, a parked one: `audit::previous_key_window`, 2 days at least): an event signed with
/// it after that is never anchored, even by someone who can write the table.
#[tokio::test]
async fn a_rotated_out_audit_key_anchors_nothing_after_its_window() {
    use kirim::secret::Secret;
    let clock = ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let name = deps.settings.audit_key_secret.clone();
    let old = Secret::new("old-audit-key-0123456789abcdef-leaked");
    deps.secrets.put(&name, &old).await.unwrap();
    let tenant = TenantId::generate();
    let chain = tenant.to_string();
    audit::record(&deps, draft_on(&tenant, "POST /v1/first"))
        .await
        .unwrap();
    deps.secrets
        .put(&name, &Secret::new("new-audit-key-0123456789abcdef-fresh"))
        .await
        .unwrap();
    // An event written beyond the head with the old key.
    let forge = |seq: u64| {
        let deps = &deps;
        let (chain, old) = (chain.clone(), old.clone());
        async move {
            let head = deps.audit.head(&chain).await.unwrap().unwrap();
            let mut e = deps.audit.event(&chain, 1).await.unwrap().unwrap();
            e.seq = seq;
            e.id = kirim::domain::new_id();
            e.action = format!("POST /v1/old-key-{seq}");
            e.prev_hash = head.hash.clone();
            e.prev_expires_at = head.expires_at;
            e.hash = audit::hash_of(&e);
            e.signature = audit::event_signature(&old, &e);
            deps.audit.put_event(&e).await.unwrap();
        }
    };
    // Within the window: what the old key signed just before the rotation is anchored.
    forge(2).await;
    audit::record(&deps, draft_on(&tenant, "POST /v1/second"))
        .await
        .unwrap();
    assert_eq!(deps.audit.head(&chain).await.unwrap().unwrap().seq, 3);
    // After it: refused, and the chain's later events park.
    clock.advance(
        chrono::Duration::from_std(audit::previous_key_window(&deps)).unwrap()
            + chrono::Duration::minutes(1),
    );
    forge(4).await;
    audit::record_or_park(&deps, draft_on(&tenant, "POST /v1/after")).await;
    assert_eq!(
        deps.audit.head(&chain).await.unwrap().unwrap().seq,
        3,
        "never anchored"
    );
    assert!(audit::drain(&deps, &chain).await.is_err());
    let v = audit::verify(&deps, &tenant, None).await.unwrap();
    assert_eq!((v.valid, v.broken_at), (false, Some(4)), "{v:?}");
}

/// A quiet chain's head, signed with the audit key before a rotation, is re-signed with
/// the new key by the daily run within the previous key's window: it still verifies after
/// the next rotation (before, it kept a key that was then neither current nor previous, and
/// verified as rewritten). After the window a head only the previous key matches is not
/// re-signed (it may be a leaked key's forgery).
async fn a_quiet_chains_head_is_re_signed_within_the_window_and_verifies_after_the_next_rotation(
    b: Backend,
) {
    use kirim::secret::Secret;
    let (_, deps, clock) = crate::caches::two_processes(b).await;
    let name = deps.settings.audit_key_secret.clone();
    let first_key = Secret::new("first-audit-key-0123456789abcdef-old");
    deps.secrets.put(&name, &first_key).await.unwrap();
    let (quiet, late) = (TenantId::generate(), TenantId::generate());
    for t in [&quiet, &late] {
        audit::record(&deps, draft_on(t, "POST /v1/first"))
            .await
            .unwrap();
    }
    let head_of = |t: &TenantId| {
        let (deps, chain) = (&deps, t.to_string());
        async move { deps.audit.head(&chain).await.unwrap().unwrap() }
    };
    let signed_first = head_of(&quiet).await;
    deps.secrets
        .put(&name, &Secret::new("second-audit-key-0123456789abcdef-x"))
        .await
        .unwrap();
    // The daily run, within the window, comes across `quiet` only.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    audit::repair_heads(&deps, std::slice::from_ref(&quiet), deadline).await;
    let resigned = head_of(&quiet).await;
    assert_ne!(resigned.signature, signed_first.signature, "re-signed");
    assert_eq!(
        (resigned.seq, &resigned.hash, resigned.expires_at),
        (
            signed_first.seq,
            &signed_first.hash,
            signed_first.expires_at
        )
    );
    // After the window: `late` is not re-signed.
    clock.advance(
        chrono::Duration::from_std(audit::previous_key_window(&deps)).unwrap()
            + chrono::Duration::minutes(1),
    );
    let before = head_of(&late).await;
    audit::repair_heads(&deps, std::slice::from_ref(&late), deadline).await;
    assert_eq!(
        head_of(&late).await,
        before,
        "not re-signed after the window"
    );
    // The next rotation: the re-signed chain verifies, the other one no longer does.
    deps.secrets
        .put(&name, &Secret::new("third-audit-key-0123456789abcdef-yz"))
        .await
        .unwrap();
    let v = audit::verify(&deps, &quiet, None).await.unwrap();
    assert!(v.valid, "re-signed: {v:?}");
    let v = audit::verify(&deps, &late, None).await.unwrap();
    assert_eq!(
        (v.valid, v.reason.as_deref()),
        (
            false,
            Some("the chain's head does not match its signature: rewritten")
        ),
        "{v:?}"
    );
}

/// An audit log that lets another process append between this one's two writes: after its
/// first event is written, `then` runs before the head write.
struct Between {
    then: tokio::sync::Mutex<Option<(kirim::service::Deps, audit::Draft)>>,
}

#[async_trait]
impl Steps for Between {
    async fn after_event(&self) -> Result<(), StoreError> {
        if let Some((other, draft)) = self.then.lock().await.take() {
            audit::record(&other, draft).await.unwrap();
        }
        Ok(())
    }
}

/// An audit log whose next event write lands but answers an error (every retry of the
/// SDK's failed after it).
struct AnswerLost(AtomicUsize);

#[async_trait]
impl Steps for AnswerLost {
    async fn after_event(&self) -> Result<(), StoreError> {
        match take(&self.0) {
            true => Err(StoreError::Unavailable("the answer was lost".into())),
            false => Ok(()),
        }
    }
}

/// An event whose write landed with its answer lost is recorded once: found in its place,
/// not parked as well (linked in beside it, it would be in the chain twice).
async fn an_event_whose_write_landed_with_its_answer_lost_is_recorded_once_not_parked_too(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let mut deps = app.app.deps.clone();
    deps.audit = Arc::new(Stepped {
        inner: deps.audit.clone(),
        steps: AnswerLost(AtomicUsize::new(1)),
    });
    audit::record_or_park(&deps, draft(&t, "POST /v1/answer-lost")).await;
    let (_, parked) = deps.audit.tip(&t.tenant_id).await.unwrap();
    assert!(!parked, "not parked: it is in");
    // The next append anchors it and goes after it.
    audit::record(&deps, draft(&t, "POST /v1/after"))
        .await
        .unwrap();
    let q = AuditQuery {
        limit: 100,
        action: Some("POST /v1/answer-lost".into()),
        ..Default::default()
    };
    let (events, _) = deps.audit.list(&t.tenant_id, &q).await.unwrap();
    assert_eq!(events.len(), 1, "recorded once");
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(v["valid"], true, "{v}");
}

async fn an_append_that_finds_another_processs_event_between_its_two_writes_anchors_it_and_appends_after_it(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let mut first = another_process(&app);
    first.audit = Arc::new(Stepped {
        inner: first.audit.clone(),
        steps: Between {
            then: tokio::sync::Mutex::new(Some((
                another_process(&app),
                draft(&t, "POST /v1/second"),
            ))),
        },
    });
    let e = audit::record(&first, draft(&t, "POST /v1/first"))
        .await
        .unwrap();
    assert_eq!(e.seq, 2);
    assert_eq!(
        actions(&get(&app, &t.key, "/v1/audit").await),
        vec![
            "POST /v1/second",
            "POST /v1/first",
            "POST /v1/platform/tenants"
        ]
    );
    let head = app
        .app
        .deps
        .audit
        .head(&t.tenant_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        head.seq, 3,
        "the first append's late head write moved nothing back"
    );
    assert_eq!(
        get(&app, &t.key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 3, "complete": true})
    );
}

async fn two_processes_appending_to_one_chain_at_once_never_fork_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (one, two) = (another_process(&app), another_process(&app));
    let drafts: Vec<audit::Draft> = (0..20)
        .map(|i| draft(&t, &format!("POST /v1/n{i}")))
        .collect();
    let appends = drafts.into_iter().enumerate().map(|(i, d)| {
        let deps = if i % 2 == 0 { &one } else { &two };
        audit::record(deps, d)
    });
    for r in futures::future::join_all(appends).await {
        r.unwrap();
    }
    let events = app
        .app
        .deps
        .audit
        .ascending(&t.tenant_id, None, 100)
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=21).collect::<Vec<_>>()
    );
    assert_eq!(
        get(&app, &t.key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 21, "complete": true})
    );
}

/// The retention run's own audit event, when the platform chain cannot take it, is parked:
/// the run's work is done and it answers its report, not an error (which would skip the
/// template sync after it and have the schedule run it all again).
async fn a_retention_run_whose_audit_event_cannot_be_appended_parks_it_and_reports(b: Backend) {
    let app = spawn_app(b).await;
    let _t = app.onboard(1).await;
    let down = failing(
        &app,
        usize::MAX,
        StoreError::Unavailable("throttled".into()),
    );
    let report = kirim::service::retention::run(&down).await;
    assert!(report.is_ok(), "{:?}", report.err());
    let (_, parked) = down.audit.tip(audit::PLATFORM_CHAIN).await.unwrap();
    assert!(
        parked,
        "the run's event waits in the platform chain's outbox"
    );
}

/// A chain longer than one request's budget is verified over several: each answers
/// `complete: false` and a cursor until the last checks the head; the cursor is signed
/// (an edited one, or another chain's, is refused `400`) and lasts an hour.
async fn a_long_chain_is_verified_over_several_requests_each_going_on_from_a_signed_cursor(
    b: Backend,
) {
    use kirim::service::audit::VerifyBudget;
    let app = spawn_app(b).await;
    let deps = &app.app.deps;
    let tenant = TenantId::generate();
    for n in 0..7 {
        audit::record(deps, draft_on(&tenant, &format!("POST /v1/messages#{n}")))
            .await
            .unwrap();
    }
    let budget = VerifyBudget {
        page_size: 2,
        pages: 2,
        time: std::time::Duration::from_secs(60),
    };
    let mut cursor: Option<String> = None;
    let mut rounds = Vec::new();
    loop {
        let v = audit::verify_within(deps, &tenant, cursor.as_deref(), budget)
            .await
            .unwrap();
        assert!(v.valid, "{v:?}");
        rounds.push((v.checked, v.complete));
        match v.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(rounds, [(4, false), (7, true)]);
    // Over HTTP, the budget is large: one request, complete.
    let key = app.onboard(0).await;
    let v = get(&app, &key.key, "/v1/audit/verify").await;
    assert_eq!(v["complete"], true, "{v}");
    // A cursor edited, or another chain's, or garbage: 400, nothing checked.
    let first = audit::verify_within(deps, &tenant, None, budget)
        .await
        .unwrap()
        .next_cursor
        .unwrap();
    let edited = first.replacen('4', "6", 1);
    for bad in [edited.as_str(), "1.2.3", "x"] {
        assert!(
            matches!(
                audit::verify_within(deps, &tenant, Some(bad), budget).await,
                Err(kirim::service::errors::ServiceError::InvalidRequest(_))
            ),
            "{bad}"
        );
    }
    let other = TenantId::generate();
    assert!(audit::verify_within(deps, &other, Some(&first), budget)
        .await
        .is_err());
    let (s, body) = {
        let res = app
            .http
            .get(app.url("/v1/audit/verify?cursor=x"))
            .bearer_auth(&key.key)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (s, _) = {
        let res = app
            .http
            .get(app.url("/v1/audit/verify?page=2"))
            .bearer_auth(&key.key)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), ())
    };
    assert_eq!(s, 400, "unknown parameters are refused");
}

/// Someone with table access but not the audit key writes an event into a chain's outbox:
/// the next append links it in (nothing parked is ever dropped) but marked: one whose
/// parked signature does not verify `parked_forged`, and verification breaks there; one
/// with none (parked while the key could not be read) `parked_unsigned`. A parked event
/// the platform signed is linked as it is.
async fn a_planted_parked_event_is_linked_only_marked_and_a_forged_one_breaks_verification(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let at = deps.clock.now();
    let planted = |n: u32, signature: Option<String>| ParkedAudit {
        chain: t.tenant_id.clone(),
        id: ulid::Ulid::from_datetime(at.into()).to_string(),
        at,
        actor_type: "api_key".into(),
        actor_id: format!("k{n}"),
        action: format!("DELETE /v1/planted/{n}"),
        ip: None,
        outcome: kirim::ports::AuditOutcome::Success,
        details: json!({"status": 204}).to_string(),
        expires_at: Some(at.timestamp() + 3600),
        signature,
    };
    // Parked by the platform: signed with the audit key.
    let key = deps
        .secrets
        .current(&deps.settings.audit_key_secret)
        .await
        .unwrap()
        .unwrap();
    let mut ours = planted(1, None);
    ours.signature = audit::parked_signature(&key, &ours);
    deps.audit.park(&ours).await.unwrap();
    deps.audit.park(&planted(2, None)).await.unwrap();
    app.send_ok(&t.key, "+60123450104").await;
    let listed = get(&app, &t.key, "/v1/audit?limit=10").await;
    let details = |action: &str| {
        listed["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action)
            .map(|e| e["details"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(details("DELETE /v1/planted/1"), json!({"status": 204}));
    assert_eq!(
        details("DELETE /v1/planted/2"),
        json!({"status": 204, "parked_unsigned": true})
    );
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(v["valid"], true, "unsigned is marked, not a break: {v}");

    deps.audit
        .park(&planted(3, Some("00".repeat(32))))
        .await
        .unwrap();
    app.send_ok(&t.key, "+60123450105").await;
    let listed = get(&app, &t.key, "/v1/audit?limit=10").await;
    let forged = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "DELETE /v1/planted/3")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(forged["details"]["parked_forged"], true, "{listed}");
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["broken_at"], forged["seq"], "{v}");
}

/// Another process begins the chain (its first event and head, one transaction) between
/// verification's read of the head and of the events.
struct BeginsAfterHeadRead(tokio::sync::Mutex<Option<(kirim::service::Deps, audit::Draft)>>);

#[async_trait]
impl Steps for BeginsAfterHeadRead {
    async fn after_head_read(&self) {
        if let Some((other, draft)) = self.0.lock().await.take() {
            audit::record(&other, draft).await.unwrap();
        }
    }
}

/// A chain begun while it is verified (no head when the head was read, its first event by
/// the time the events were) is not "the head is gone": it is checked again, with its head.
#[tokio::test]
async fn a_chain_begun_while_it_is_verified_is_not_reported_headless() {
    let clock = ManualClock::new();
    let real = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    let tenant = TenantId::generate();
    let mut deps = real.clone();
    deps.audit = Arc::new(Stepped {
        inner: real.audit.clone(),
        steps: BeginsAfterHeadRead(tokio::sync::Mutex::new(Some((
            real.clone(),
            draft_on(&tenant, "POST /v1/first"),
        )))),
    });
    let v = audit::verify(&deps, &tenant, None).await.unwrap();
    assert_eq!((v.valid, v.checked), (true, 1), "{v:?}");
}

/// The operator's calls about a tenant are in its audit trail, refused ones too (a bad
/// body, a closed tenant's top-up); a call about an id that is no tenant's begins no chain.
async fn the_operators_refused_calls_about_a_tenant_are_in_its_trail(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let credits = format!("/v1/platform/tenants/{}/credits", t.tenant_id);
    let res = app
        .http
        .post(app.url(&credits))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"amount": -5, "reference": "oops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let page = get(
        &app,
        &t.key,
        "/v1/audit?action=POST%20/v1/platform/tenants/%7Bid%7D/credits",
    )
    .await;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["outcome"], "error");
    assert_eq!(events[0]["actor"]["type"], "operator");
    assert_eq!(events[0]["details"]["status"], 400);
    // An id that is no tenant's: the platform chain, no chain of its own.
    let nobody = TenantId::generate();
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{nobody}/credits")))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"amount": 5, "reference": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        app.app.deps.audit.head(nobody.as_str()).await.unwrap(),
        None
    );
}

/// A process that remembers a chain's head from before its tenant's close-out (which gave
/// the head a TTL) appends after it: the head's move, refused for the TTL it did not know,
/// is made again with the TTL raised, not left behind its event.
async fn an_append_after_a_head_remembered_from_before_the_close_out_moves_the_head_with_its_ttl(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = TenantId::parse(&t.tenant_id).expect("id");
    let proc = another_process(&app);
    audit::record(&proc, draft(&t, "POST /v1/before"))
        .await
        .unwrap();
    let deps = &app.app.deps;
    let now = deps.clock.now();
    deps.tenants
        .set_status(&id, kirim::ports::TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    let ttls = kirim::ports::CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 60,
    };
    let later = std::time::Instant::now() + std::time::Duration::from_secs(600);
    deps.retention
        .close_out(&id, ttls, now, later)
        .await
        .unwrap();
    let e = audit::record(&proc, draft(&t, "POST /v1/after"))
        .await
        .unwrap();
    let head = deps.audit.head(&t.tenant_id).await.unwrap().unwrap();
    assert_eq!(head.seq, e.seq, "the head follows its event");
    assert!(
        head.ttl.is_some_and(|ttl| Some(ttl) >= e.expires_at),
        "{:?} against {:?}",
        head.ttl,
        e.expires_at
    );
}

/// A handler's own note of what it left (a cancelled message, a paused campaign) is kept
/// beside the HTTP status, not overwritten by it.
async fn a_cancel_is_audited_with_the_messages_status_beside_the_http_status(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let send_at = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .json(
            &json!({"to": "+60123450410", "send_at": send_at, "template": {
            "name": "order_update", "language": "en_US", "category": "utility",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "A"}]}]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .http
        .delete(app.url(&format!("/v1/messages/{id}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = get(&app, &t.key, "/v1/audit").await;
    let cancel = &page["events"][0];
    assert_eq!(cancel["action"], "DELETE /v1/messages/{id}", "{page}");
    assert_eq!(
        (
            cancel["details"]["status"].clone(),
            cancel["details"]["message_status"].clone()
        ),
        (json!(200), json!("cancelled")),
        "{cancel}"
    );
}

/// Two processes' clocks differ by a moment: an event linked by the one behind never
/// expires before its predecessor, so retention never deletes the chain out of order and
/// verification never finds a gap between the two expiries.
#[tokio::test]
async fn an_event_linked_by_a_clock_behind_its_predecessors_never_expires_before_it() {
    let clock = ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let tenant = TenantId::generate();
    audit::record(&deps, draft_on(&tenant, "POST /v1/a"))
        .await
        .unwrap();
    clock.advance(chrono::Duration::seconds(-2));
    audit::record(&deps, draft_on(&tenant, "POST /v1/b"))
        .await
        .unwrap();
    let events = deps
        .audit
        .ascending(tenant.as_str(), None, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        events[1].expires_at >= events[0].expires_at,
        "{:?} then {:?}",
        events[0].expires_at,
        events[1].expires_at
    );
    // Past the second's expiry by its own clock, before the first's.
    let retention = deps.settings.retention.audit;
    clock.advance(chrono::Duration::from_std(retention).unwrap() + chrono::Duration::seconds(1));
    let v = audit::verify(&deps, &tenant, None).await.unwrap();
    assert!(v.valid, "{v:?}");
    // A retention shortened since is not held off by the predecessor's later expiry (only a
    // clock a moment behind is).
    let other = TenantId::generate();
    audit::record(&deps, draft_on(&other, "POST /v1/c"))
        .await
        .unwrap();
    let mut shorter = (*deps.settings).clone();
    shorter.retention.audit = retention / 2;
    let mut deps = deps.clone();
    deps.settings = std::sync::Arc::new(shorter);
    audit::record(&deps, draft_on(&other, "POST /v1/d"))
        .await
        .unwrap();
    let events = deps
        .audit
        .ascending(other.as_str(), None, 10)
        .await
        .unwrap();
    let last = events.last().unwrap();
    let expected = kirim::ports::Clock::now(&*clock).timestamp() + (retention / 2).as_secs() as i64;
    assert!(
        last.expires_at.is_some_and(|x| (x - expected).abs() <= 1),
        "{:?} against {expected}",
        last.expires_at
    );
}

/// A filter that matches one event among many newer ones finds it on the first page: the
/// DynamoDB adapter read a window of `limit` events a page and answered empty pages (with
/// a cursor) until the window reached it, and the console said "No events.".
async fn a_sparse_action_filter_finds_its_event_on_the_first_page(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let res = app
        .http
        .post(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .json(&json!({"name": "staff", "role": "read_only"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let ro = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // 40 newer events: refused reads of an admin route, each audited.
    for _ in 0..40 {
        let res = app
            .http
            .get(app.url("/v1/api-keys"))
            .bearer_auth(&ro)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
    }
    let page = get(&app, &t.key, "/v1/audit?action=POST%20/v1/api-keys&limit=5").await;
    assert_eq!(actions(&page), vec!["POST /v1/api-keys"], "{page}");
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    // Unfiltered pages are full, and a full last page ends the log (no cursor to an empty
    // page after it).
    let page = get(&app, &t.key, "/v1/audit?limit=5").await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(5), "{page}");
    let all = get(&app, &t.key, "/v1/audit?limit=100").await;
    let total = all["events"].as_array().map_or(0, Vec::len);
    assert!((42..100).contains(&total), "{all}");
    let exact = get(&app, &t.key, &format!("/v1/audit?limit={total}")).await;
    assert_eq!(exact["events"].as_array().map(Vec::len), Some(total));
    assert_eq!(exact["next_cursor"], Value::Null, "{exact}");
}

/// An opt-out added or lifted through the API is audited with whose it was (masked, as a
/// send's `to`) and, when added, its scope: a tenant can tell from its trail whose opt-out
/// an operator lifted.
async fn an_opt_out_added_and_lifted_is_audited_with_its_masked_key_and_scope(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let put = app
        .http
        .put(app.url("/v1/opt-outs/%2B60123457777"))
        .bearer_auth(&t.key)
        .json(&json!({"scope": "marketing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let del = app
        .http
        .delete(app.url("/v1/opt-outs/%2B60123457777"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let page = get(&app, &t.key, "/v1/audit").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events[0]["action"], "DELETE /v1/opt-outs/{key}", "{page}");
    assert_eq!(events[0]["details"]["key"], "+60****7777", "{page}");
    assert_eq!(events[1]["action"], "PUT /v1/opt-outs/{key}", "{page}");
    assert_eq!(events[1]["details"]["key"], "+60****7777", "{page}");
    assert_eq!(events[1]["details"]["scope"], "marketing", "{page}");
    assert!(!page.to_string().contains("60123457777"), "masked: {page}");
}

on_both_backends!(
    an_opt_out_added_and_lifted_is_audited_with_its_masked_key_and_scope,
    a_sparse_action_filter_finds_its_event_on_the_first_page,
    a_tenant_meta_suspends_while_it_is_onboarded_has_a_chain_that_verifies,
    an_onboarding_whose_outcome_was_unknown_begins_the_chain_of_the_tenant_it_made,
    a_quiet_chains_head_is_re_signed_within_the_window_and_verifies_after_the_next_rotation,
    an_operators_call_about_a_closed_out_tenant_is_recorded_on_the_platform_chain,
    a_cancel_is_audited_with_the_messages_status_beside_the_http_status,
    an_append_after_a_head_remembered_from_before_the_close_out_moves_the_head_with_its_ttl,
    the_operators_refused_calls_about_a_tenant_are_in_its_trail,
    a_planted_parked_event_is_linked_only_marked_and_a_forged_one_breaks_verification,
    a_long_chain_is_verified_over_several_requests_each_going_on_from_a_signed_cursor,
    an_event_whose_write_landed_with_its_answer_lost_is_recorded_once_not_parked_too,
    a_retention_run_whose_audit_event_cannot_be_appended_parks_it_and_reports,
    user_and_2fa_changes_are_audited_with_what_they_changed,
    an_event_parked_on_a_chain_nobody_appends_to_is_linked_in_by_the_retention_job,
    an_event_left_beyond_its_head_is_listed_verified_as_in_flight_and_anchored_by_the_next_append,
    an_event_beyond_the_head_that_does_not_verify_is_never_anchored_and_later_events_park,
    an_event_left_beyond_the_head_of_a_quiet_chain_is_anchored_by_the_retention_run,
    an_append_that_finds_another_processs_event_between_its_two_writes_anchors_it_and_appends_after_it,
    two_processes_appending_to_one_chain_at_once_never_fork_it,
    an_event_the_chain_cannot_take_is_parked_and_linked_in_by_the_next_append_in_order,
    sends_mutations_and_denials_are_audited_in_a_verifiable_chain,
    an_unknown_key_is_audited_on_the_platform_chain,
    concurrent_calls_produce_one_gapless_chain,
    logins_are_audited_on_the_users_tenant_with_both_outcomes,
);

/// A retention run out of time stops before the next chain and says so (its report is
/// not `complete`); the next run links the event in.
#[tokio::test]
async fn a_drain_out_of_time_leaves_its_chains_to_the_next_run_and_says_it_is_not_complete() {
    let clock = ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let tenant = TenantId::generate();
    let at = deps.clock.now();
    deps.audit
        .park(&ParkedAudit {
            chain: tenant.to_string(),
            id: ulid::Ulid::new().to_string(),
            at,
            actor_type: "api_key".into(),
            actor_id: "k".into(),
            action: "POST /v1/late".into(),
            ip: None,
            outcome: kirim::ports::AuditOutcome::Success,
            details: "{}".into(),
            expires_at: Some(at.timestamp() + 3600),
            signature: None,
        })
        .await
        .unwrap();
    let report = |r: audit::DrainReport| serde_json::to_value(r).unwrap();
    let spent = std::time::Instant::now();
    assert_eq!(
        report(audit::drain_all(&deps, spent).await.unwrap()),
        json!({"chains": 0, "linked": 0, "still_parked": 0, "complete": false})
    );
    assert_eq!(audit::verify(&deps, &tenant, None).await.unwrap().parked, 1);
    let ample = std::time::Instant::now() + std::time::Duration::from_secs(600);
    assert_eq!(
        report(audit::drain_all(&deps, ample).await.unwrap()),
        json!({"chains": 1, "linked": 1, "still_parked": 0, "complete": true})
    );
    let v = audit::verify(&deps, &tenant, None).await.unwrap();
    assert_eq!((v.valid, v.checked, v.parked), (true, 1, 0));
}

/// Someone with table access edits an event in DynamoDB: verification notices.
#[tokio::test]
async fn an_event_edited_in_dynamodb_fails_verification() {
    let app = spawn_app(Backend::Aws).await;
    let t = app.onboard(5).await;
    app.send_ok(&t.key, "+60123450100").await;
    assert_eq!(get(&app, &t.key, "/v1/audit/verify").await["valid"], true);
    let sdk = kirim_tests::moto_sdk().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    ddb.update_item()
        .table_name(format!("{}-Table", app.stack))
        .key("pk", Av::S(format!("AUDIT#{}", t.tenant_id)))
        .key("sk", Av::S(format!("EVENT#{:016}", 2)))
        .update_expression("SET outcome = :o")
        .expression_attribute_values(":o", Av::S("error".into()))
        .send()
        .await
        .unwrap();
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["broken_at"], 2);
    // The console's check says where and why, as the API does.
    let (email, _) = crate::users::new_user(&app, &t.key, "admin").await;
    let mut web = crate::console::sign_in(&app, &email).await;
    let page = web.get("/console/audit?verify=1").await;
    assert!(page.html.contains("it breaks at event 2"), "{}", page.html);
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{v}");
    let shown = reason.replace('\'', "&#39;").replace('"', "&quot;");
    assert!(
        page.html.contains(reason) || page.html.contains(&shown),
        "{reason}: {}",
        page.html
    );
}

/// Someone with table access but not the audit key deletes a chain's head and its newest
/// events: a chain's first event is written with its head, so events without a head are
/// never in flight. Verification says the head is gone, and the chain's next appends do not
/// rebuild a head over what is left (which would hide the deletion for good): they park.
#[tokio::test]
async fn a_deleted_head_and_newest_events_are_caught_and_never_re_anchored() {
    let app = spawn_app(Backend::Aws).await;
    let t = app.onboard(5).await;
    app.send_ok(&t.key, "+60123450101").await;
    app.send_ok(&t.key, "+60123450102").await;
    assert_eq!(get(&app, &t.key, "/v1/audit/verify").await["valid"], true);
    let sdk = kirim_tests::moto_sdk().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let delete = |sk: String| {
        let ddb = ddb.clone();
        let table = format!("{}-Table", app.stack);
        let pk = format!("AUDIT#{}", t.tenant_id);
        async move {
            ddb.delete_item()
                .table_name(table)
                .key("pk", Av::S(pk))
                .key("sk", Av::S(sk))
                .send()
                .await
                .unwrap();
        }
    };
    // The onboarding (1) and two sends (2, 3): the head and events 2 and 3 go; event 1
    // alone looks like a chain's first event.
    delete("HEAD".into()).await;
    delete(format!("EVENT#{:016}", 3)).await;
    delete(format!("EVENT#{:016}", 2)).await;
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(v["valid"], false, "{v}");
    // Appends do not anchor event 1 again and go on from it.
    app.send_ok(&t.key, "+60123450103").await;
    let deps = &app.app.deps;
    assert_eq!(deps.audit.head(&t.tenant_id).await.unwrap(), None);
    let (_, parked) = deps.audit.tip(&t.tenant_id).await.unwrap();
    assert!(parked, "the send's event waits, parked");
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(v["valid"], false, "{v}");
}

/// The oldest events expire (2-year TTL, here shortened); the rest still verifies.
/// Memory deps whose audit events are kept an hour, and a tenant's chain of `old` events
/// then, 40 minutes later, `new` more: the clock, the deps and the tenant.
async fn chain_kept_an_hour(
    old: u32,
    new: u32,
) -> (std::sync::Arc<ManualClock>, kirim::service::Deps, TenantId) {
    let clock = ManualClock::new();
    let mut settings = kirim_tests::test_settings();
    settings.retention.audit = std::time::Duration::from_secs(3600);
    let deps = kirim::wiring::memory_deps(settings, clock.clone()).unwrap();
    let tenant = TenantId::generate();
    let draft = |n: u32| audit::Draft {
        tenant: Some(tenant.clone()),
        actor_type: "api_key",
        actor_id: "k".into(),
        action: format!("POST /v1/messages#{n}"),
        ip: None,
        outcome: kirim::ports::AuditOutcome::Success,
        details: json!({}),
    };
    for n in 0..old {
        audit::record(&deps, draft(n)).await.unwrap();
    }
    clock.advance(chrono::Duration::minutes(40));
    for n in old..old + new {
        audit::record(&deps, draft(n)).await.unwrap();
    }
    (clock, deps, tenant)
}

/// A verification resumed after the events right after its cursor expired (the oldest end
/// of a busy chain, between two requests) is not a break: the chain now starts later, and
/// is checked as a chain's first retained event is.
#[tokio::test]
async fn a_resumed_verification_past_events_that_expired_meanwhile_still_verifies() {
    use kirim::service::audit::VerifyBudget;
    let (clock, deps, tenant) = chain_kept_an_hour(3, 3).await;
    let budget = VerifyBudget {
        page_size: 2,
        pages: 1,
        time: std::time::Duration::from_secs(60),
    };
    let first = audit::verify_within(&deps, &tenant, None, budget)
        .await
        .unwrap();
    assert_eq!((first.checked, first.complete), (2, false), "{first:?}");
    // The first three expire before the verification goes on.
    clock.advance(chrono::Duration::minutes(30));
    let mut cursor = first.next_cursor;
    let mut last = None;
    while let Some(c) = cursor {
        let v = audit::verify_within(&deps, &tenant, Some(&c), budget)
            .await
            .unwrap();
        assert!(v.valid, "{v:?}");
        cursor = v.next_cursor.clone();
        last = Some(v);
    }
    assert!(last.is_some_and(|v| v.complete));
}

#[tokio::test]
async fn the_chain_still_verifies_after_its_oldest_events_expire() {
    let (clock, deps, tenant) = chain_kept_an_hour(3, 2).await;
    assert_eq!(
        audit::verify(&deps, &tenant, None).await.unwrap().checked,
        5
    );
    clock.advance(chrono::Duration::minutes(30));
    let r = audit::verify(&deps, &tenant, None).await.unwrap();
    assert!(r.valid);
    assert_eq!(r.checked, 2, "the three oldest expired");
    let run = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(run.deleted["audit"], 3, "{run:?}");
    assert!(
        audit::verify(&deps, &tenant, None).await.unwrap().valid,
        "also once they are deleted"
    );
}

/// An open tenant's chain head never expires, so a tenant older than the audit retention
/// whose head and events are all gone lost its chain too (its events may have expired; its
/// head may not have).
#[tokio::test]
async fn a_tenant_older_than_the_audit_retention_without_a_chain_fails_verification() {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let mut cfg = kirim_tests::local_config(Backend::Aws).await;
    cfg.settings.retention.audit = std::time::Duration::from_secs(2);
    let app = kirim_tests::spawn_with(cfg).await;
    let sdk = kirim_tests::moto_sdk().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = format!("{}-Table", app.stack);
    let t = app.onboard(5).await;
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    for sk in ["HEAD".to_owned(), format!("EVENT#{:016}", 1)] {
        ddb.delete_item()
            .table_name(&table)
            .key("pk", Av::S(format!("AUDIT#{}", t.tenant_id)))
            .key("sk", Av::S(sk))
            .send()
            .await
            .unwrap();
    }
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(
        (v["valid"].clone(), v["reason"].clone()),
        (json!(false), json!("the tenant's audit chain is missing")),
        "{v}"
    );
}

/// Someone with write access to the table, but not to the audit key, deletes or rewrites
/// events in DynamoDB: each is reported with its reason.
#[tokio::test]
async fn deleting_the_oldest_events_wiping_or_rehashing_a_chain_in_dynamodb_fails_verification() {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let app = spawn_app(Backend::Aws).await;
    let sdk = kirim_tests::moto_sdk().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = format!("{}-Table", app.stack);
    let key = |t: &str, sk: String| {
        std::collections::HashMap::from([
            ("pk".to_owned(), Av::S(format!("AUDIT#{t}"))),
            ("sk".to_owned(), Av::S(sk)),
        ])
    };
    let event_sk = |seq: u64| format!("EVENT#{seq:016}");
    let delete = |t: String, sk: String| {
        ddb.delete_item()
            .table_name(&table)
            .set_key(Some(key(&t, sk)))
            .send()
    };
    let verify = |t: &kirim_tests::Onboarded| {
        let key = t.key.clone();
        let app = &app;
        async move { get(app, &key, "/v1/audit/verify").await }
    };
    let three_events = || async {
        let t = app.onboard(5).await;
        app.send_ok(&t.key, "+60123450400").await;
        app.send_ok(&t.key, "+60123450401").await;
        assert_eq!(
            verify(&t).await,
            json!({"valid": true, "checked": 3, "complete": true})
        );
        t
    };

    // The oldest event, long before it expires.
    let t = three_events().await;
    delete(t.tenant_id.clone(), event_sk(1)).await.unwrap();
    let v = verify(&t).await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(
        v["reason"],
        "events before 2 were deleted before they expired"
    );

    // Every event.
    let t = three_events().await;
    for seq in 1..=3 {
        delete(t.tenant_id.clone(), event_sk(seq)).await.unwrap();
    }
    let v = verify(&t).await;
    assert_eq!(
        (v["valid"].clone(), v["checked"].clone()),
        (json!(false), json!(0)),
        "{v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("wiped"), "{v}");

    // Every event and the head.
    delete(t.tenant_id.clone(), "HEAD".into()).await.unwrap();
    let v = verify(&t).await;
    assert_eq!(v["reason"], "the tenant's audit chain is missing", "{v}");
    // The tenant's next audited call begins a chain again (it finds none), signed and
    // linked as any: its first event is not the onboarding, which gives the wipe away.
    app.send_ok(&t.key, "+60123450402").await;
    let v = verify(&t).await;
    assert_eq!(
        (v["valid"].clone(), v["broken_at"].clone()),
        (json!(false), json!(1)),
        "{v}"
    );
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("not the tenant's onboarding"),
        "{v}"
    );

    // Every event and the head, and an unsigned "onboarding" put in the chain's outbox (no
    // audit key needed): not a beginning while it waits, nor once the next call links it.
    let t = three_events().await;
    for seq in 1..=3 {
        delete(t.tenant_id.clone(), event_sk(seq)).await.unwrap();
    }
    delete(t.tenant_id.clone(), "HEAD".into()).await.unwrap();
    let planted = kirim::ports::ParkedAudit {
        chain: t.tenant_id.clone(),
        id: ulid::Ulid::new().to_string(),
        at: chrono::Utc::now(),
        actor_type: "operator".into(),
        actor_id: "operator".into(),
        action: audit::ONBOARDING.into(),
        ip: None,
        outcome: kirim::ports::AuditOutcome::Success,
        details: "{}".into(),
        expires_at: None,
        signature: None,
    };
    app.app.deps.audit.park(&planted).await.unwrap();
    let v = verify(&t).await;
    assert_eq!(v["valid"], false, "waiting: {v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .starts_with("the tenant's audit chain is missing, and what waits"),
        "waiting: {v}"
    );
    app.send_ok(&t.key, "+60123450403").await;
    let v = verify(&t).await;
    assert_eq!(
        (v["valid"].clone(), v["broken_at"].clone()),
        (json!(false), json!(1)),
        "linked: {v}"
    );
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("without a signature"),
        "{v}"
    );

    // An edit with every later hash recomputed and the head moved to match: only the
    // head's signature, which needs the audit key, gives it away.
    let t = three_events().await;
    let chain = t.tenant_id.clone();
    let mut events = app
        .app
        .deps
        .audit
        .ascending(&chain, None, 10)
        .await
        .unwrap();
    events[1].outcome = kirim::ports::AuditOutcome::Denied;
    for i in 1..events.len() {
        events[i].prev_hash = events[i - 1].hash.clone();
        events[i].hash = audit::hash_of(&events[i]);
        ddb.update_item()
            .table_name(&table)
            .set_key(Some(key(&chain, event_sk(events[i].seq))))
            .update_expression("SET outcome = :o, prev_hash = :p, #h = :h")
            .expression_attribute_names("#h", "hash")
            .expression_attribute_values(":o", Av::S(events[i].outcome.as_str().into()))
            .expression_attribute_values(":p", Av::S(events[i].prev_hash.clone()))
            .expression_attribute_values(":h", Av::S(events[i].hash.clone()))
            .send()
            .await
            .unwrap();
    }
    ddb.update_item()
        .table_name(&table)
        .set_key(Some(key(&chain, "HEAD".into())))
        .update_expression("SET #h = :h")
        .expression_attribute_names("#h", "hash")
        .expression_attribute_values(":h", Av::S(events[2].hash.clone()))
        .send()
        .await
        .unwrap();
    let v = verify(&t).await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(
        v["reason"], "the chain's head does not match its signature: rewritten",
        "{v}"
    );
}

/// The app's tenant store, as an onboarding meets it: its write lands, and then either
/// Meta suspends the tenant before the onboarding's request ends (an `account_update`
/// while its templates sync: `suspend_with`), or the write's answer is lost and the
/// read-back that follows fails too (`lose_answer`: the outcome is unknown), or the
/// onboarding never goes on (`hang`: its process is stuck, as in a Meta call that runs
/// into the function's timeout, until the test drops it: it died).
pub(crate) struct OnboardingWindow {
    inner: Arc<dyn kirim::ports::TenantStore>,
    suspend_with: Option<kirim::service::Deps>,
    lose_answer: bool,
    hang: bool,
    /// Tenant reads still to fail (the read-back after a lost answer).
    failing_reads: AtomicUsize,
}

impl OnboardingWindow {
    fn deps(app: &TestApp, suspend: bool, lose_answer: bool) -> kirim::service::Deps {
        let mut deps = app.app.deps.clone();
        deps.tenants = Arc::new(OnboardingWindow {
            inner: app.app.deps.tenants.clone(),
            suspend_with: suspend.then(|| app.app.deps.clone()),
            lose_answer,
            hang: false,
            failing_reads: AtomicUsize::new(0),
        });
        deps
    }

    /// The app's deps, with an onboarding that writes its tenant and then never ends.
    pub(crate) fn hanging(app: &TestApp) -> kirim::service::Deps {
        let mut deps = app.app.deps.clone();
        deps.tenants = Arc::new(OnboardingWindow {
            inner: app.app.deps.tenants.clone(),
            suspend_with: None,
            lose_answer: false,
            hang: true,
            failing_reads: AtomicUsize::new(0),
        });
        deps
    }
}

kirim_tests::pass_through! {
    impl TenantStore for OnboardingWindow {
        async fn onboard(
            &self,
            tenant: &kirim::ports::Tenant,
            display: Option<&str>,
            key: &kirim::ports::ApiKeyRecord,
            initial: Option<&kirim::ports::LedgerEntry>,
        ) -> Result<(), StoreError> {
            self.inner.onboard(tenant, display, key, initial).await?;
            if let Some(deps) = &self.suspend_with {
                let suspended = kirim::service::accounts::try_suspend_for_meta(
                    deps,
                    &tenant.id,
                    "meta account_update: ACCOUNT_RESTRICTION",
                    "webhook",
                    None,
                )
                .await?;
                assert!(suspended);
            }
            if self.lose_answer {
                self.failing_reads.store(1, Ordering::SeqCst);
                return Err(StoreError::Unavailable("the answer was lost".into()));
            }
            if self.hang {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
        async fn get_tenant(&self, id: &TenantId) -> Result<Option<kirim::ports::Tenant>, StoreError> {
            if take(&self.failing_reads) {
                return Err(StoreError::Unavailable("throttled".into()));
            }
            self.inner.get_tenant(id).await
        }
    }
}

/// `POST /v1/platform/tenants` through admin_api's router on `deps`: the status and body.
pub(crate) async fn onboard_through(deps: &kirim::service::Deps, pnid: &str) -> (u16, Value) {
    use tower::ServiceExt;
    let body = json!({
        "name": "Kedai", "waba_id": "1000001", "phone_number_id": pnid,
        "meta_access_token": "EAAG-test-meta-token", "credits": 1});
    let res = kirim::http::admin_api_router(deps.clone())
        .oneshot(
            axum::http::Request::builder()
                .method("POST")
                .uri("/v1/platform/tenants")
                .header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub(crate) fn new_pnid() -> String {
    format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000)
}

/// Meta's `account_update` can suspend a tenant while its onboarding's request still syncs
/// its templates, before the middleware records the onboarding: the suspension is the
/// chain's event 1, the onboarding event 2, and the chain verifies (not "begun again").
async fn a_tenant_meta_suspends_while_it_is_onboarded_has_a_chain_that_verifies(b: Backend) {
    let app = spawn_app(b).await;
    let deps = OnboardingWindow::deps(&app, true, false);
    let (status, body) = onboard_through(&deps, &new_pnid()).await;
    assert_eq!(status, 201, "{body}");
    let key = body["admin_api_key"].as_str().unwrap();
    let page = get(&app, key, "/v1/audit").await;
    assert_eq!(
        actions(&page),
        vec!["POST /v1/platform/tenants", "tenant.suspend"],
        "{page}"
    );
    assert_eq!(
        get(&app, key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 2, "complete": true})
    );
}

/// An onboarding whose write landed but whose answer was lost, and whose read-back failed
/// too, answers an error; its event still begins the tenant's chain (the middleware finds
/// the tenant), so the operator's next calls about it (a top-up, then a key) do not leave
/// a chain that verifies as begun again.
async fn an_onboarding_whose_outcome_was_unknown_begins_the_chain_of_the_tenant_it_made(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let deps = OnboardingWindow::deps(&app, false, true);
    let pnid = new_pnid();
    let (status, body) = onboard_through(&deps, &pnid).await;
    assert_eq!(status, 503, "{body}");
    let id = app
        .app
        .deps
        .tenants
        .tenant_by_phone_number_id(&pnid)
        .await
        .unwrap()
        .expect("the write landed");
    let operator = |path: String, body: Value| {
        app.http
            .post(app.url(&path))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&body)
            .send()
    };
    let res = operator(
        format!("/v1/platform/tenants/{id}/credits"),
        json!({"amount": 5, "reference": "INV-1"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let res = operator(
        format!("/v1/platform/tenants/{id}/api-keys"),
        json!({"name": "rescue", "role": "admin"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.unwrap();
    let key = key["key"].as_str().unwrap();
    let page = get(&app, key, "/v1/audit").await;
    assert_eq!(
        actions(&page),
        vec![
            "POST /v1/platform/tenants/{id}/api-keys",
            "POST /v1/platform/tenants/{id}/credits",
            "POST /v1/platform/tenants",
        ],
        "{page}"
    );
    let first = &page["events"][2];
    assert_eq!(
        (&first["outcome"], &first["details"]["status"]),
        (&json!("error"), &json!(503)),
        "{first}"
    );
    assert_eq!(
        get(&app, key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 3, "complete": true})
    );
}
