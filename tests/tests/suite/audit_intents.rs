//! Audit intents (README "The audit trail"): an audited call whose process dies between its
//! handler and its event's append is recorded all the same, as `interrupted`, by the
//! one-minute sweep; on both backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kirim::config::Backend;
use kirim::domain::TenantId;
use kirim::ports::{AuditOutcome, ParkedAudit, StaleIntent};
use kirim::service::audit;
use kirim::store_error::StoreError;
use kirim_tests::{ManualClock, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::audit::{actions, get, new_pnid, onboard_through, OnboardingWindow};
use crate::stepped_audit::{Stepped, Steps};

/// Local mode on `b` with a manual clock.
async fn app_with_clock(b: Backend) -> (TestApp, Arc<ManualClock>) {
    let clock = ManualClock::new();
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.clock = kirim_infra::local::LocalClock(clock.clone());
    (kirim_tests::spawn_with(cfg).await, clock)
}

/// A sweep with all the time it needs.
async fn sweep(deps: &kirim::service::Deps) -> audit::IntentSweep {
    let ample = std::time::Instant::now() + std::time::Duration::from_secs(600);
    audit::sweep_intents(deps, ample).await.unwrap()
}

/// Every live intent, however young.
async fn intents(deps: &kirim::service::Deps) -> Vec<ParkedAudit> {
    let later = deps.clock.now() + chrono::Duration::days(1);
    deps.audit
        .stale_intents(later, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|i| match i {
            StaleIntent::Intent(i) => i,
            unreadable => panic!("{unreadable:?}"),
        })
        .collect()
}

/// An admin key for `tenant`, made by the operator (README's recovery of a tenant whose
/// onboarding's answer was lost).
async fn operators_key(app: &TestApp, tenant: &TenantId) -> String {
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{tenant}/api-keys")))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"name": "rescue", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["key"].as_str().unwrap().to_owned()
}

/// An onboarding whose process dies after its tenant was written (stuck, as in its
/// template sync, until the function's timeout ends it) leaves no event: its intent is
/// swept, once older than the bound, into the new tenant's chain as its event 1, an
/// `error` saying `interrupted`, and the chain verifies.
async fn an_onboarding_whose_process_dies_after_its_write_begins_its_tenants_chain_as_interrupted(
    b: Backend,
) {
    let (app, clock) = app_with_clock(b).await;
    let deps = OnboardingWindow::hanging(&app);
    let pnid = new_pnid();
    let died = tokio::time::timeout(
        std::time::Duration::from_millis(1500),
        onboard_through(&deps, &pnid),
    )
    .await;
    assert!(died.is_err(), "the onboarding never answered: {died:?}");
    let real = &app.app.deps;
    let tenant = real
        .tenants
        .tenant_by_phone_number_id(&pnid)
        .await
        .unwrap()
        .expect("the onboarding's write landed");
    let waiting = intents(real).await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(
        waiting[0].chain,
        tenant.to_string(),
        "the chain it will begin"
    );
    // Young: the call may still be running.
    clock.advance(chrono::Duration::seconds(60));
    assert_eq!(sweep(real).await.interrupted, 0);
    clock.advance(chrono::Duration::seconds(61));
    let swept = sweep(real).await;
    assert_eq!((swept.interrupted, swept.linked), (1, 1), "{swept:?}");
    assert!(intents(real).await.is_empty());
    let key = operators_key(&app, &tenant).await;
    let page = get(&app, &key, "/v1/audit").await;
    assert_eq!(
        actions(&page),
        vec![
            "POST /v1/platform/tenants/{id}/api-keys",
            "POST /v1/platform/tenants"
        ],
        "{page}"
    );
    let first = &page["events"][1];
    assert_eq!(first["seq"], 1);
    assert_eq!(first["outcome"], "error");
    assert_eq!(
        first["details"],
        json!({"interrupted": true, "status": null})
    );
    assert_eq!(
        first["actor"],
        json!({"type": "operator", "id": "platform"})
    );
    assert_eq!(
        get(&app, &key, "/v1/audit/verify").await,
        json!({"valid": true, "checked": 2, "complete": true})
    );
}

/// Calls that run to their end remove their intent: after an onboarding, an opt-out, a
/// key's creation, a refused call (a role too low) and a failed one, none is left.
async fn audited_calls_that_end_leave_no_intent_behind(b: Backend) {
    let (app, _clock) = app_with_clock(b).await;
    let t = app.onboard(5).await;
    let res = app
        .http
        .put(app.url("/v1/opt-outs/%2B60123457301"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = app
        .http
        .post(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .json(&json!({"name": "ops", "role": "operator"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let ops: Value = res.json().await.unwrap();
    let ops = ops["key"].as_str().unwrap();
    let res = app
        .http
        .delete(app.url("/v1/opt-outs/%2B60123457301"))
        .bearer_auth(ops)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "an operator key may not delete opt-outs");
    let res = app
        .http
        .delete(app.url("/v1/messages/01JNOSUCHMESSAGE0000000000"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(intents(&app.app.deps).await, vec![]);
    let page = get(&app, &t.key, "/v1/audit").await;
    assert_eq!(actions(&page).len(), 5, "each call recorded: {page}");
}

/// An intent younger than [`audit::INTENT_STALE_AFTER`] is a call that may still be
/// running: the sweep leaves it; once older, it becomes the chain's interrupted event.
async fn a_young_intent_is_not_swept_and_an_old_one_is(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(5).await;
    let tenant = TenantId::parse(&t.tenant_id).unwrap();
    let deps = &app.app.deps;
    let draft = audit::Draft {
        tenant: Some(tenant.clone()),
        actor_type: "api_key",
        actor_id: "k1".into(),
        action: "POST /v1/templates/sync".into(),
        ip: Some("203.0.113.7".into()),
        outcome: AuditOutcome::Error,
        details: Value::Null,
    };
    audit::intend(deps, &draft).await.unwrap();
    clock.advance(chrono::Duration::seconds(119));
    assert_eq!(sweep(deps).await, audit::IntentSweep::default());
    assert_eq!(intents(deps).await.len(), 1);
    clock.advance(chrono::Duration::seconds(2));
    assert_eq!(sweep(deps).await.interrupted, 1);
    let page = get(&app, &t.key, "/v1/audit?limit=1").await;
    let e = &page["events"][0];
    assert_eq!(
        (&e["action"], &e["outcome"], &e["ip"], &e["details"]),
        (
            &json!("POST /v1/templates/sync"),
            &json!("error"),
            &json!("203.0.113.7"),
            &json!({"interrupted": true, "status": null})
        ),
        "{page}"
    );
    assert_eq!(get(&app, &t.key, "/v1/audit/verify").await["valid"], true);
}

/// Counts the intents written.
struct CountIntents(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Steps for CountIntents {
    fn on_intent(&self) -> Result<(), StoreError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A call through admin_api's router (it serves the send API's routes too) on `deps`.
async fn call(
    deps: &kirim::service::Deps,
    method: &str,
    path: &str,
    key: &str,
    body: Value,
) -> u16 {
    kirim::http::admin_api_router(deps.clone())
        .oneshot(
            axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(match body {
                    Value::Null => axum::body::Body::empty(),
                    body => axum::body::Body::from(body.to_string()),
                })
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The send hot path writes no intent (issue #13: no unit more per message); any other
/// audited call writes one.
async fn a_send_writes_no_audit_intent(b: Backend) {
    let (app, _clock) = app_with_clock(b).await;
    let t = app.onboard(5).await;
    let written = Arc::new(AtomicUsize::new(0));
    let mut deps = app.app.deps.clone();
    deps.audit = Arc::new(Stepped {
        inner: app.app.deps.audit.clone(),
        steps: CountIntents(written.clone()),
    });
    let send = json!({
        "to": "+60123457302",
        "template": {
            "name": "order_update", "language": "en_US", "category": "utility",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "ORDER-42"}]}],
        },
    });
    assert_eq!(call(&deps, "POST", "/v1/messages", &t.key, send).await, 202);
    assert_eq!(written.load(Ordering::SeqCst), 0, "a send writes no intent");
    assert_eq!(
        call(
            &deps,
            "PUT",
            "/v1/opt-outs/%2B60123457303",
            &t.key,
            Value::Null
        )
        .await
            / 100,
        2
    );
    assert_eq!(written.load(Ordering::SeqCst), 1, "an opt-out writes one");
    assert!(intents(&app.app.deps).await.is_empty());
}

/// An intent someone without the audit key wrote into the table is linked marked, as a
/// parked event is: `parked_forged` (a break for verify) for a bad signature,
/// `parked_unsigned` for none; one the platform signed is linked as it is.
async fn a_planted_intent_is_linked_only_marked_and_a_forged_one_breaks_verification(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
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
        outcome: AuditOutcome::Error,
        details: audit::interrupted_details().to_string(),
        expires_at: Some(at.timestamp() + 86_400),
        signature,
    };
    let key = deps
        .secrets
        .current(&deps.settings.audit_key_secret)
        .await
        .unwrap()
        .unwrap();
    let mut ours = planted(1, None);
    ours.signature = audit::parked_signature(&key, &ours);
    deps.audit.put_intent(&ours).await.unwrap();
    deps.audit.put_intent(&planted(2, None)).await.unwrap();
    clock.advance(chrono::Duration::minutes(3));
    assert_eq!(sweep(deps).await.interrupted, 2);
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
    assert_eq!(
        details("DELETE /v1/planted/1"),
        json!({"interrupted": true, "status": null})
    );
    assert_eq!(
        details("DELETE /v1/planted/2"),
        json!({"interrupted": true, "status": null, "parked_unsigned": true})
    );
    assert_eq!(get(&app, &t.key, "/v1/audit/verify").await["valid"], true);

    let forged = planted(3, Some("00".repeat(32)));
    deps.audit.put_intent(&forged).await.unwrap();
    assert_eq!(sweep(deps).await.interrupted, 1, "its time is its id's");
    let listed = get(&app, &t.key, "/v1/audit?limit=10").await;
    let event = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "DELETE /v1/planted/3")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(event["details"]["parked_forged"], true, "{listed}");
    let v = get(&app, &t.key, "/v1/audit/verify").await;
    assert_eq!(
        (&v["valid"], &v["broken_at"]),
        (&json!(false), &event["seq"]),
        "{v}"
    );
}

/// The operator's call about a tenant that does not exist (an id made up, or a failed
/// onboarding's) is recorded on the platform chain, as the middleware records it, not on
/// a chain begun for an id that is no tenant's.
async fn an_interrupted_operators_call_about_no_tenant_goes_to_the_platform_chain(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let deps = &app.app.deps;
    let nobody = TenantId::generate();
    let draft = audit::Draft {
        tenant: Some(nobody.clone()),
        actor_type: "operator",
        actor_id: "platform".into(),
        action: "POST /v1/platform/tenants/{id}/suspend".into(),
        ip: None,
        outcome: AuditOutcome::Error,
        details: Value::Null,
    };
    audit::intend(deps, &draft).await.unwrap();
    clock.advance(chrono::Duration::minutes(3));
    assert_eq!(sweep(deps).await.interrupted, 1);
    assert!(deps
        .audit
        .head(&nobody.to_string())
        .await
        .unwrap()
        .is_none());
    let (events, _) = deps
        .audit
        .list(
            audit::PLATFORM_CHAIN,
            &kirim::ports::AuditQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = events
        .iter()
        .find(|e| e.action == "POST /v1/platform/tenants/{id}/suspend")
        .expect("on the platform chain");
    assert!(e.details.contains("\"interrupted\":true"), "{e:?}");
    assert!(!e.details.contains("parked_"), "signed again: {e:?}");
}

/// Refuses every intent's write (its partition throttled, the store down).
struct NoIntents;

#[async_trait::async_trait]
impl Steps for NoIntents {
    fn on_intent(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("throttled".into()))
    }
}

/// A call whose intent cannot be written goes ahead without one (the safety net failing
/// must not refuse an opt-out), and is recorded as any call is: its own event, a success.
async fn a_call_whose_intent_cannot_be_written_goes_ahead_and_is_recorded(b: Backend) {
    let (app, _clock) = app_with_clock(b).await;
    let t = app.onboard(5).await;
    let mut deps = app.app.deps.clone();
    deps.audit = Arc::new(Stepped {
        inner: app.app.deps.audit.clone(),
        steps: NoIntents,
    });
    let status = call(
        &deps,
        "PUT",
        "/v1/opt-outs/%2B60123457304",
        &t.key,
        Value::Null,
    )
    .await;
    assert_eq!(status / 100, 2, "the opt-out is made: {status}");
    assert!(intents(&app.app.deps).await.is_empty());
    let page = get(&app, &t.key, "/v1/audit?limit=1").await;
    let e = &page["events"][0];
    assert_eq!(
        (&e["action"], &e["outcome"]),
        (&json!("PUT /v1/opt-outs/{key}"), &json!("success")),
        "{page}"
    );
}

/// Refuses the promotion of one intent (a write that fails, not a conflict).
struct RefusePromotionOf(String);

#[async_trait::async_trait]
impl Steps for RefusePromotionOf {
    fn before_promote(&self, id: &str) -> Result<(), StoreError> {
        if id == self.0 {
            return Err(StoreError::Unavailable("throttled".into()));
        }
        Ok(())
    }
}

/// A stale intent whose write as an interrupted event fails is counted `failed` and gone
/// past: the one behind it (another tenant's) is recorded in the same sweep; the next
/// sweep records the first.
async fn a_stale_intent_whose_promotion_fails_does_not_hold_up_the_one_behind_it(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let first = app.onboard(5).await;
    let second = app.onboard(5).await;
    let real = &app.app.deps;
    let draft = |t: &kirim_tests::Onboarded, action: &str| audit::Draft {
        tenant: Some(TenantId::parse(&t.tenant_id).unwrap()),
        actor_type: "api_key",
        actor_id: "k1".into(),
        action: action.into(),
        ip: None,
        outcome: AuditOutcome::Error,
        details: Value::Null,
    };
    let stuck = audit::intend(real, &draft(&first, "POST /v1/templates/sync"))
        .await
        .unwrap();
    clock.advance(chrono::Duration::seconds(1));
    audit::intend(real, &draft(&second, "DELETE /v1/opt-outs/{key}"))
        .await
        .unwrap();
    clock.advance(chrono::Duration::minutes(3));
    let mut deps = real.clone();
    deps.audit = Arc::new(Stepped {
        inner: real.audit.clone(),
        steps: RefusePromotionOf(stuck.clone()),
    });
    let swept = sweep(&deps).await;
    assert_eq!(
        (swept.interrupted, swept.failed, swept.more),
        (1, 1, true),
        "{swept:?}"
    );
    let latest = |key: &str| {
        let key = key.to_owned();
        let app = &app;
        async move { get(app, &key, "/v1/audit?limit=1").await["events"][0].clone() }
    };
    let e = latest(&second.key).await;
    assert_eq!(
        (&e["action"], &e["details"]),
        (
            &json!("DELETE /v1/opt-outs/{key}"),
            &json!({"interrupted": true, "status": null})
        ),
        "{e}"
    );
    assert_eq!(intents(real).await.len(), 1, "the first is kept");
    let swept = sweep(real).await;
    assert_eq!((swept.interrupted, swept.failed), (1, 0), "{swept:?}");
    assert_eq!(
        latest(&first.key).await["action"],
        json!("POST /v1/templates/sync")
    );
}

on_both_backends!(
    a_call_whose_intent_cannot_be_written_goes_ahead_and_is_recorded,
    a_stale_intent_whose_promotion_fails_does_not_hold_up_the_one_behind_it,
    an_onboarding_whose_process_dies_after_its_write_begins_its_tenants_chain_as_interrupted,
    audited_calls_that_end_leave_no_intent_behind,
    a_young_intent_is_not_swept_and_an_old_one_is,
    a_send_writes_no_audit_intent,
    a_planted_intent_is_linked_only_marked_and_a_forged_one_breaks_verification,
    an_interrupted_operators_call_about_no_tenant_goes_to_the_platform_chain,
);
