//! Access control over HTTP on both backends: API keys, the route × role table, tenant
//! isolation, IP allow-lists, suspension and closing.

use kirim::config::Backend;
use kirim::http::access::{Access, ROUTES};
use kirim::service::{apikeys, auth};
use kirim_tests::{spawn_app, ManualClock, TestApp, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

pub(crate) async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = app.http.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

pub(crate) async fn new_key(app: &TestApp, admin: &str, role: &str) -> (String, String) {
    let (s, b) = call(
        app,
        "POST",
        "/v1/api-keys",
        Some(admin),
        Some(json!({"name": format!("{role} key"), "role": role})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    (
        b["id"].as_str().unwrap().to_owned(),
        b["key"].as_str().unwrap().to_owned(),
    )
}

async fn api_keys_are_shown_once_rotated_with_a_grace_period_and_revoked_at_once(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (s, created) = call(
        &app,
        "POST",
        "/v1/api-keys",
        Some(&t.key),
        Some(json!({"name": "billing system", "role": "read_only", "expires_in_days": 30})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kirim_"));
    assert_eq!(created["role"], "read_only");
    assert!(created["expires_at"].is_string());
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&key), None).await.0,
        200
    );

    let (_, list) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    let text = list.to_string();
    assert!(
        !text.contains(&key) && !text.contains(&kirim::secret::token_hash(&key)),
        "no secret or hash in lists"
    );
    assert!(!text.contains("key_hash"));
    let listed = list["api_keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k["id"] == id.as_str()
        && k["status"] == "active"
        && k["name"] == "billing system"));

    // Rotation with a grace period: both keys work until it ends.
    let (s, rotated) = call(
        &app,
        "POST",
        &format!("/v1/api-keys/{id}/rotate"),
        Some(&t.key),
        Some(json!({"grace_period_hours": 2})),
    )
    .await;
    assert_eq!(s, 201, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(rotated["role"], "read_only");
    assert_eq!(rotated["previous"]["status"], "expiring");
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&key), None).await.0,
        200,
        "old key in its grace period"
    );
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&new_key), None)
            .await
            .0,
        200
    );
    // A rotated key cannot be rotated again.
    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/api-keys/{id}/rotate"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!((s, code(&b)), (409, "conflict"));

    // Rotation without grace ends the old key at once.
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    let (_, again) = call(
        &app,
        "POST",
        &format!("/v1/api-keys/{new_id}/rotate"),
        Some(&t.key),
        Some(json!({"grace_period_hours": 0})),
    )
    .await;
    let (s, b) = call(&app, "GET", "/v1/account", Some(&new_key), None).await;
    assert_eq!((s, code(&b)), (401, "unauthenticated"));
    let newest = again["key"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&newest), None)
            .await
            .0,
        200
    );

    // Revocation is refused from the next request on.
    let newest_id = again["id"].as_str().unwrap().to_owned();
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/api-keys/{newest_id}"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(&app, "GET", "/v1/account", Some(&newest), None).await;
    assert_eq!((s, code(&b)), (401, "unauthenticated"));
    let (_, list) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    assert!(list["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == newest_id.as_str() && k["status"] == "revoked"));

    for bad in [
        json!({"name": "", "role": "admin"}),
        json!({"name": "x", "role": "root"}),
        json!({"name": "x", "role": "admin", "expires_in_days": 0}),
        json!({"name": "x", "role": "admin", "extra": 1}),
    ] {
        let (s, b) = call(
            &app,
            "POST",
            "/v1/api-keys",
            Some(&t.key),
            Some(bad.clone()),
        )
        .await;
        assert_eq!((s, code(&b)), (400, "invalid_request"), "{bad}");
    }
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/api-keys/{newest_id}/rotate"),
        Some(&t.key),
        Some(json!({"grace_period_hours": 1000})),
    )
    .await;
    assert_eq!(s, 400);
}

async fn another_tenants_keys_answer_404_on_every_route_that_takes_an_id(b: Backend) {
    let app = spawn_app(b).await;
    let a = app.onboard(1).await;
    let other = app.onboard(1).await;
    let (id, key) = new_key(&app, &a.key, "operator").await;
    for (method, path) in [
        ("POST", format!("/v1/api-keys/{id}/rotate")),
        ("DELETE", format!("/v1/api-keys/{id}")),
    ] {
        let (s, body) = call(&app, method, &path, Some(&other.key), None).await;
        assert_eq!((s, code(&body)), (404, "not_found"), "{method} {path}");
    }
    let msg = app.send_ok(&key, "+60123455555").await;
    let (s, _) = call(
        &app,
        "GET",
        &format!("/v1/messages/{msg}"),
        Some(&other.key),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&key), None).await.0,
        200,
        "the key still works"
    );
}

/// Fills a route template with ids nobody owns, so allowed calls change nothing.
fn concrete(path: &str) -> String {
    path.replace("{id}", &ulid::Ulid::new().to_string())
        .replace("{phone}", "+60123450999")
}

async fn every_route_answers_every_kind_of_credential_as_the_access_table_says(b: Backend) {
    // Hundreds of refused credentials from one address: its allowance raised so that every
    // route answers its own refusal, not the address's wait.
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.limits.bad_credentials = 10_000;
    let app = kirim_tests::spawn_with(cfg).await;
    let a = app.onboard(0).await;
    let other = app.onboard(0).await;
    let (_, operator_key) = new_key(&app, &a.key, "operator").await;
    let (_, read_only_key) = new_key(&app, &a.key, "read_only").await;
    let keys = [
        ("admin", a.key.as_str()),
        ("operator", operator_key.as_str()),
        ("read_only", read_only_key.as_str()),
    ];
    // Console users of each role: their sessions are tenant credentials with that role.
    let mut users = Vec::new();
    for role in ["admin", "operator", "read_only"] {
        users.push((role, super::users::new_user(&app, &a.key, role).await));
    }
    let mut sessions = Vec::new();
    for (role, (email, _)) in &users {
        sessions.push((*role, super::users::login_ok(&app, email).await));
    }
    let denied = |s: u16| s == 401 || s == 403;
    for rule in ROUTES {
        let path = concrete(rule.path);
        let at = format!("{} {}", rule.method, rule.path);
        let (none, none_body) = call(&app, rule.method, &path, None, None).await;
        assert_ne!(
            none_body["error"]["message"], "no such route",
            "{at} is served"
        );
        let (wrong, _) = call(&app, rule.method, &path, Some("kirim_not_a_key"), None).await;
        let (op, _) = call(&app, rule.method, &path, Some(OPERATOR_TOKEN), None).await;
        let (foreign, _) = call(&app, rule.method, &path, Some(&other.key), None).await;
        match rule.access {
            Access::Public => {
                for s in [none, wrong, op, foreign] {
                    assert!(!denied(s), "{at}: {s}");
                }
                let (s, _) = call(&app, rule.method, &path, Some(&sessions[0].1), None).await;
                assert!(!denied(s), "{at} with a session: {s}");
            }
            Access::Meta => {
                // Meta authenticates by signature or verify token; bearer tokens are ignored.
                assert!([wrong, op, foreign].iter().all(|s| *s == none), "{at}");
            }
            Access::Platform => {
                assert_eq!((none, wrong), (401, 401), "{at}");
                assert!(!denied(op), "{at}: the operator is let through, got {op}");
                assert_eq!(foreign, 403, "{at}");
                for (role, key) in keys {
                    assert_eq!(
                        call(&app, rule.method, &path, Some(key), None).await.0,
                        403,
                        "{at} as {role}"
                    );
                }
                for (role, token) in &sessions {
                    assert_eq!(
                        call(&app, rule.method, &path, Some(token), None).await.0,
                        403,
                        "{at} as a {role} session"
                    );
                }
            }
            Access::Tenant(required) => {
                assert_eq!((none, wrong), (401, 401), "{at}");
                assert_eq!(
                    op, 403,
                    "{at}: the operator token is not a tenant credential"
                );
                assert!(
                    !denied(foreign),
                    "{at}: another tenant's admin acts on its own tenant"
                );
                for (role, key) in keys {
                    let (s, body) = call(&app, rule.method, &path, Some(key), None).await;
                    let allowed = kirim::domain::Role::parse(role).unwrap().includes(required);
                    if allowed {
                        assert!(!denied(s), "{at} as {role}: {s} {body}");
                    } else {
                        assert_eq!((s, code(&body)), (403, "forbidden"), "{at} as {role}");
                    }
                }
                for (role, token) in &sessions {
                    let (s, body) = call(&app, rule.method, &path, Some(token), None).await;
                    let allowed = kirim::domain::Role::parse(role).unwrap().includes(required);
                    if allowed {
                        assert!(!denied(s), "{at} as a {role} session: {s} {body}");
                    } else {
                        assert_eq!(
                            (s, code(&body)),
                            (403, "forbidden"),
                            "{at} as a {role} session"
                        );
                    }
                }
            }
            Access::Session => {
                assert_eq!((none, wrong), (401, 401), "{at}");
                assert_eq!(op, 403, "{at}: the operator token is not a session");
                assert_eq!(foreign, 403, "{at}: an API key is not a session");
                for (role, key) in keys {
                    let (s, _) = call(&app, rule.method, &path, Some(key), None).await;
                    assert_eq!(s, 403, "{at} with an {role} API key");
                }
                // A fresh session per call: logout ends the one it is called with.
                for (role, (email, _)) in &users {
                    let token = super::users::login_ok(&app, email).await;
                    let (s, body) = call(&app, rule.method, &path, Some(&token), None).await;
                    assert!(!denied(s), "{at} as a {role} session: {s} {body}");
                }
            }
        }
    }
}

async fn an_ip_allow_list_refuses_other_addresses_until_the_operator_rescues_the_tenant(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(2).await;
    let (s, body) = call(
        &app,
        "PUT",
        "/v1/settings/ip-allowlist",
        Some(&t.key),
        Some(json!({"cidrs": ["127.0.0.0/8", "2001:db8::/32"]})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["cidrs"], json!(["127.0.0.0/8", "2001:db8::/32"]));
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&t.key), None).await.0,
        200,
        "local mode's peer is 127.0.0.1"
    );
    for bad in [
        json!({"cidrs": ["203.0.113.0/33"]}),
        json!({"cidrs": ["not-an-ip"]}),
        json!({"cidrs": "10.0.0.0/8"}),
        json!({"cidrs": [], "x": 1}),
    ] {
        let (s, body) = call(
            &app,
            "PUT",
            "/v1/settings/ip-allowlist",
            Some(&t.key),
            Some(bad.clone()),
        )
        .await;
        assert_eq!((s, code(&body)), (400, "invalid_request"), "{bad}");
    }
    let (_, got) = call(&app, "GET", "/v1/settings/ip-allowlist", Some(&t.key), None).await;
    assert_eq!(
        got["cidrs"],
        json!(["127.0.0.0/8", "2001:db8::/32"]),
        "invalid lists changed nothing"
    );

    // Locking itself out: every API-key request is now refused, even fixing the list...
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/settings/ip-allowlist",
        Some(&t.key),
        Some(json!({"cidrs": ["203.0.113.0/24"]})),
    )
    .await;
    assert_eq!(s, 200);
    for (m, p) in [("GET", "/v1/account"), ("PUT", "/v1/settings/ip-allowlist")] {
        let (s, body) = call(&app, m, p, Some(&t.key), Some(json!({"cidrs": []}))).await;
        assert_eq!((s, code(&body)), (403, "ip_not_allowed"), "{m} {p}");
    }
    assert_eq!(
        app.send_template(&t.key, "+60123456666").await.status(),
        403
    );
    let tid = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let stored = app
        .app
        .deps
        .tenants
        .get_tenant(&tid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.credits, 2, "a refused send debits nothing");
    // ...until the platform operator replaces it.
    let (s, body) = call(
        &app,
        "PUT",
        &format!("/v1/platform/tenants/{}/ip-allowlist", t.tenant_id),
        Some(OPERATOR_TOKEN),
        Some(json!({"cidrs": ["127.0.0.1"]})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["cidrs"], json!(["127.0.0.1/32"]));
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&t.key), None).await.0,
        200
    );
    let (s, _) = call(
        &app,
        "PUT",
        &format!("/v1/platform/tenants/{}/ip-allowlist", ulid::Ulid::new()),
        Some(OPERATOR_TOKEN),
        Some(json!({"cidrs": []})),
    )
    .await;
    assert_eq!(s, 404);
}

async fn a_suspended_tenant_cannot_send_until_resumed_and_a_closed_one_cannot_authenticate(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let tenant = |suffix: &str| format!("/v1/platform/tenants/{}{suffix}", t.tenant_id);
    let (s, body) = call(
        &app,
        "POST",
        &tenant("/suspend"),
        Some(OPERATOR_TOKEN),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (s, code(&body)),
        (400, "invalid_request"),
        "a reason is required"
    );
    let (s, body) = call(
        &app,
        "POST",
        &tenant("/suspend"),
        Some(OPERATOR_TOKEN),
        Some(json!({"reason": "invoice 2026-11 unpaid"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["tenant"]["status"], "suspended");
    let (_, account) = call(&app, "GET", "/v1/account", Some(&t.key), None).await;
    assert_eq!(
        account["status"], "suspended",
        "a suspended tenant can still read"
    );
    let res = app.send_template(&t.key, "+60123457777").await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "tenant_suspended"
    );
    assert_eq!(app.credits(&t.key).await, 3, "nothing debited");
    // The operator's reason is audited on the platform chain, not shown to the tenant.
    let (_, own) = call(&app, "GET", "/v1/audit?limit=100", Some(&t.key), None).await;
    let suspension = own["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "POST /v1/platform/tenants/{id}/suspend")
        .cloned()
        .unwrap_or_else(|| panic!("the suspension on the tenant's chain: {own}"));
    assert_eq!(suspension["details"]["reason_given"], true, "{suspension}");
    assert!(!own.to_string().contains("invoice 2026-11"), "{own}");
    let q = kirim::ports::AuditQuery {
        limit: 100,
        action: Some("tenant.suspend".into()),
        ..Default::default()
    };
    let (platform, _) = app.app.deps.audit.list("platform", &q).await.unwrap();
    assert!(
        platform
            .iter()
            .any(|e| e.details.contains("invoice 2026-11 unpaid")
                && e.details.contains(&t.tenant_id)),
        "{platform:?}"
    );

    let (s, _) = call(&app, "POST", &tenant("/resume"), Some(OPERATOR_TOKEN), None).await;
    assert_eq!(s, 200);
    app.send_ok(&t.key, "+60123457777").await;

    let (s, body) = call(
        &app,
        "DELETE",
        &tenant(""),
        Some(OPERATOR_TOKEN),
        Some(json!({"reason": "contract ended"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["tenant"]["status"], "closed");
    let (s, body) = call(&app, "GET", "/v1/account", Some(&t.key), None).await;
    assert_eq!(
        (s, code(&body)),
        (401, "unauthenticated"),
        "a closed tenant's keys are refused"
    );
    let (s, again) = call(
        &app,
        "DELETE",
        &tenant(""),
        Some(OPERATOR_TOKEN),
        Some(json!({"reason": "changed my mind"})),
    )
    .await;
    assert_eq!(s, 200, "closing again is harmless");
    assert_eq!(
        again["status_reason"], "contract ended",
        "the first reason kept"
    );
    // One closing on the platform chain; the repeat's reason as a repeat's.
    let closings = |action: &str| {
        let q = kirim::ports::AuditQuery {
            limit: 100,
            action: Some(action.into()),
            ..Default::default()
        };
        let deps = app.app.deps.clone();
        let id = t.tenant_id.clone();
        async move {
            let (events, _) = deps.audit.list("platform", &q).await.unwrap();
            events
                .into_iter()
                .filter(|e| e.details.contains(&id))
                .map(|e| e.details)
                .collect::<Vec<_>>()
        }
    };
    let first = closings("tenant.close").await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("contract ended"), "{first:?}");
    let repeated = closings("tenant.close_repeated").await;
    assert_eq!(repeated.len(), 1, "{repeated:?}");
    assert!(repeated[0].contains("changed my mind"), "{repeated:?}");
    let (s, body) = call(&app, "POST", &tenant("/resume"), Some(OPERATOR_TOKEN), None).await;
    assert_eq!((s, code(&body)), (409, "conflict"), "closing is final");
    // No new money and no settings for a closed account either.
    for (method, path, body) in [
        (
            "POST",
            tenant("/credits"),
            json!({"amount": 100, "reference": "INV-late"}),
        ),
        (
            "PUT",
            tenant("/ip-allowlist"),
            json!({"cidrs": ["203.0.113.0/24"]}),
        ),
        (
            "PUT",
            tenant("/limits"),
            json!({"requests_per_sec": 10, "burst": 20}),
        ),
    ] {
        let (s, answer) = call(&app, method, &path, Some(OPERATOR_TOKEN), Some(body)).await;
        assert_eq!((s, code(&answer)), (409, "conflict"), "{path}: {answer}");
    }
}

async fn metas_account_restriction_pauses_every_tenant_on_that_waba_only(b: Backend) {
    let app = spawn_app(b).await;
    let onboard = |waba: &'static str, pnid: String| {
        app.http.post(app.url("/v1/platform/tenants")).bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"name": "Kedai", "waba_id": waba, "phone_number_id": pnid, "meta_access_token": "EAAG", "credits": 3}))
            .send()
    };
    let pn = || format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
    let restricted: Value = onboard("7001", pn()).await.unwrap().json().await.unwrap();
    let fine: Value = onboard("7002", pn()).await.unwrap().json().await.unwrap();
    let update = |waba: &str, value: Value| {
        json!({"object": "whatsapp_business_account",
        "entry": [{"id": waba, "time": 1700000000, "changes": [{"field": "account_update", "value": value}]}]})
    };
    // A reinstatement or an unrelated event changes nothing.
    let res = app
        .post_webhook(&update(
            "7001",
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "REINSTATE"}}),
        ))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .post_webhook(&update("7001", json!({"event": "VERIFIED_ACCOUNT"})))
        .await;
    assert_eq!(res.status(), 200);
    let key = restricted["admin_api_key"].as_str().unwrap();
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(key), None).await.1["status"],
        "active"
    );

    let restriction = json!({"event": "ACCOUNT_RESTRICTION",
        "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1900000000}]});
    let res = app.post_webhook(&update("7001", restriction.clone())).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["summary"]["applied"], 1);
    let (_, account) = call(&app, "GET", "/v1/account", Some(key), None).await;
    assert_eq!(account["status"], "suspended", "{account}");
    assert_eq!(app.send_template(key, "+60123450100").await.status(), 403);
    let other = fine["admin_api_key"].as_str().unwrap();
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(other), None).await.1["status"],
        "active",
        "another WABA is untouched"
    );
    let suspensions = "/v1/audit?action=tenant.suspend";
    let (_, audit) = call(&app, "GET", suspensions, Some(key), None).await;
    assert!(
        audit["events"][0]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("ACCOUNT_RESTRICTION"),
        "{audit}"
    );
    // The operator fixes the cause and resumes the tenant; Meta then delivers the old
    // restriction again (as after a 500): the resume stands, and nothing is audited twice.
    let tenant_id = restricted["tenant"]["id"].as_str().unwrap_or_default();
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/platform/tenants/{tenant_id}/resume"),
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let res = app.post_webhook(&update("7001", restriction)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["summary"]["ignored"], 1);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(key), None).await.1["status"],
        "active",
        "the resume after Meta's event stands"
    );
    let (_, again) = call(&app, "GET", suspensions, Some(key), None).await;
    assert_eq!(again["events"].as_array().map(Vec::len), Some(1), "{again}");
    // A later restriction (Meta's time after the resume) suspends it again.
    let later = json!({"object": "whatsapp_business_account",
        "entry": [{"id": "7001", "time": chrono::Utc::now().timestamp() + 5,
            "changes": [{"field": "account_update", "value": {"event": "ACCOUNT_VIOLATION"}}]}]});
    assert_eq!(app.post_webhook(&later).await.status(), 200);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(key), None).await.1["status"],
        "suspended"
    );
}

/// Meta restricts more than business-initiated messages: a restriction of
/// customer-initiated messages or of adding phone numbers leaves templates sendable, so it
/// suspends no tenant (it is logged); one that also restricts business-initiated messages
/// does, its reason naming the restrictions.
async fn metas_restriction_of_anything_but_business_initiated_messages_pauses_no_tenant(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let waba = format!("{}", 800_000 + kirim_tests::rand_u32() % 100_000);
    let pnid = format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
    let onboarded: Value = app
        .http
        .post(app.url("/v1/platform/tenants"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(
            &json!({"name": "Kedai", "waba_id": waba, "phone_number_id": pnid,
            "meta_access_token": "EAAG", "credits": 3}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = onboarded["admin_api_key"].as_str().unwrap();
    let restriction = |info: Value| {
        json!({"object": "whatsapp_business_account",
        "entry": [{"id": waba, "time": chrono::Utc::now().timestamp() + 5,
            "changes": [{"field": "account_update", "value": {"event": "ACCOUNT_RESTRICTION",
                "restriction_info": info}}]}]})
    };
    let others = restriction(json!([
        {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": "2026-04-19T13:59:20+0000"},
        {"restriction_type": "RESTRICTED_CUSTOMER_INITIATED_MESSAGING", "expiration": "2026-04-19T13:59:20+0000"}
    ]));
    let res = app.post_webhook(&others).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["summary"]["ignored"], 1);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(key), None).await.1["status"],
        "active"
    );
    assert_eq!(app.send_template(key, "+60123450100").await.status(), 202);

    let templates = restriction(json!([
        {"restriction_type": "RESTRICTED_CUSTOMER_INITIATED_MESSAGING"},
        {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": "2026-04-19T13:59:20+0000"}
    ]));
    let res = app.post_webhook(&templates).await;
    assert_eq!(res.json::<Value>().await.unwrap()["summary"]["applied"], 1);
    let (_, account) = call(&app, "GET", "/v1/account", Some(key), None).await;
    assert_eq!(account["status"], "suspended", "{account}");
    let (_, audit) = call(
        &app,
        "GET",
        "/v1/audit?action=tenant.suspend",
        Some(key),
        None,
    )
    .await;
    assert_eq!(
        audit["events"][0]["details"]["reason"],
        "meta account_update: ACCOUNT_RESTRICTION (RESTRICTED_CUSTOMER_INITIATED_MESSAGING, \
         RESTRICTED_BIZ_INITIATED_MESSAGING until 2026-04-19T13:59:20+0000)",
        "{audit}"
    );
}

/// A tenant that revoked its only admin key (nothing stops an admin key revoking itself)
/// has no way back in by itself: the platform operator mints it a key, shown once and
/// audited on the tenant's chain. Not for a closed or unknown tenant, not with a tenant's
/// key, not from a bad body.
async fn the_operator_mints_a_key_for_a_tenant_that_revoked_its_last_admin_key(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let (_, keys) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    let own = keys["api_keys"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/api-keys/{own}"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(&app, "GET", "/v1/account", Some(&t.key), None).await;
    assert_eq!(s, 401, "locked out");
    let path = |id: &str| format!("/v1/platform/tenants/{id}/api-keys");
    let body = json!({"name": "rescue", "role": "admin"});
    let (s, b_) = call(
        &app,
        "POST",
        &path(&t.tenant_id),
        Some(&t.key),
        Some(body.clone()),
    )
    .await;
    assert_eq!((s, code(&b_)), (401, "unauthenticated"), "{b_}");
    let (s, b_) = call(
        &app,
        "POST",
        &path(&t.tenant_id),
        Some(OPERATOR_TOKEN),
        Some(json!({"name": "rescue", "role": "owner"})),
    )
    .await;
    assert_eq!((s, code(&b_)), (400, "invalid_request"), "{b_}");
    let (s, minted) = call(
        &app,
        "POST",
        &path(&t.tenant_id),
        Some(OPERATOR_TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 201, "{minted}");
    assert_eq!(minted["role"], "admin");
    let key = minted["key"].as_str().unwrap().to_owned();
    let (s, keys) = call(&app, "GET", "/v1/api-keys", Some(&key), None).await;
    assert_eq!(s, 200, "the rescued tenant manages its keys again");
    assert!(
        !keys.to_string().contains(&key),
        "the key is shown once: {keys}"
    );
    let (_, audit) = call(&app, "GET", "/v1/audit", Some(&key), None).await;
    let event = audit["events"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["action"] == "POST /v1/platform/tenants/{id}/api-keys")
        })
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(event["details"]["key_id"], minted["id"], "{audit}");
    assert_eq!(event["actor"]["type"], "operator", "{event}");
    // Unknown and closed tenants take none.
    let unknown = kirim::domain::TenantId::generate();
    let (s, _) = call(
        &app,
        "POST",
        &path(unknown.as_str()),
        Some(OPERATOR_TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/platform/tenants/{}", t.tenant_id),
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, b_) = call(
        &app,
        "POST",
        &path(&t.tenant_id),
        Some(OPERATOR_TOKEN),
        Some(body),
    )
    .await;
    assert_eq!((s, code(&b_)), (409, "conflict"), "{b_}");
}

/// Only an admin revokes keys: a tenant at its 50 live keys whose admin key was lost had no
/// way back in if the operator's admin key counted against the cap too.
async fn the_operators_admin_key_is_minted_for_a_tenant_at_its_key_cap(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    for i in 1..kirim::service::apikeys::MAX_LIVE_KEYS {
        let (s, b_) = call(
            &app,
            "POST",
            "/v1/api-keys",
            Some(&t.key),
            Some(json!({"name": format!("reader {i}"), "role": "read_only"})),
        )
        .await;
        assert_eq!(s, 201, "{b_}");
    }
    let path = format!("/v1/platform/tenants/{}/api-keys", t.tenant_id);
    let at_cap = |role: &str| json!({"name": "rescue", "role": role});
    let (s, b_) = call(
        &app,
        "POST",
        &path,
        Some(OPERATOR_TOKEN),
        Some(at_cap("operator")),
    )
    .await;
    assert_eq!((s, code(&b_)), (400, "invalid_request"), "{b_}");
    let (s, minted) = call(
        &app,
        "POST",
        &path,
        Some(OPERATOR_TOKEN),
        Some(at_cap("admin")),
    )
    .await;
    assert_eq!(s, 201, "the way back in: {minted}");
    let key = minted["key"].as_str().unwrap_or_default().to_owned();
    let (s, keys) = call(&app, "GET", "/v1/api-keys", Some(&key), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        keys["api_keys"].as_array().map(Vec::len),
        Some(kirim::service::apikeys::MAX_LIVE_KEYS + 1)
    );
    // The tenant's own admin still meets the cap.
    let (s, b_) = call(
        &app,
        "POST",
        "/v1/api-keys",
        Some(&key),
        Some(at_cap("admin")),
    )
    .await;
    assert_eq!((s, code(&b_)), (400, "invalid_request"), "{b_}");
}

/// Checks `path`'s paging as every list of the API pages: the default page holds all
/// `total` records with `next_cursor` `null`; pages of `limit=2` walk them once, in the
/// same order, each `next_cursor` going on from the last; a bad `limit` or `cursor` (or
/// another parameter) is `400 invalid_request`.
pub(crate) async fn assert_pages(app: &TestApp, key: &str, path: &str, field: &str, total: usize) {
    let ids = |v: &Value| -> Vec<String> {
        v[field]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|x| x["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (s, all) = call(app, "GET", path, Some(key), None).await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(ids(&all).len(), total, "{all}");
    assert!(all["next_cursor"].is_null(), "{all}");
    let (mut walked, mut next, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let uri = match &next {
            Some(c) => format!("{path}?limit=2&cursor={c}"),
            None => format!("{path}?limit=2"),
        };
        let (s, page) = call(app, "GET", &uri, Some(key), None).await;
        assert_eq!(s, 200, "{page}");
        assert!(ids(&page).len() <= 2, "{page}");
        walked.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => break,
        }
        assert!(pages <= total, "the walk ends");
    }
    assert_eq!(walked, ids(&all));
    assert_eq!(pages, total.div_ceil(2));
    for bad in [
        "limit=0",
        "limit=101",
        "limit=two",
        "cursor=nope",
        "cursor=",
        "order=newest",
    ] {
        let (s, b) = call(app, "GET", &format!("{path}?{bad}"), Some(key), None).await;
        assert_eq!((s, code(&b)), (400, "invalid_request"), "{bad}: {b}");
    }
}

/// `GET /v1/api-keys` pages as the other lists do (`limit`, `cursor` → `next_cursor`),
/// its default page holding a normal tenant's every key.
async fn the_api_keys_list_pages_with_limit_and_cursor_and_refuses_a_bad_one(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    for role in ["operator", "read_only"] {
        new_key(&app, &t.key, role).await;
    }
    assert_pages(&app, &t.key, "/v1/api-keys", "api_keys", 3).await;
}

on_both_backends!(
    the_api_keys_list_pages_with_limit_and_cursor_and_refuses_a_bad_one,
    an_address_flooding_bad_credentials_waits_and_stops_writing_audit_events,
    a_leaked_key_flooding_from_a_refused_address_waits_and_stops_writing_audit_events,
    the_operator_mints_a_key_for_a_tenant_that_revoked_its_last_admin_key,
    the_operators_admin_key_is_minted_for_a_tenant_at_its_key_cap,
    previous_credentials_are_accepted_only_within_the_rotation_grace,
    api_keys_are_shown_once_rotated_with_a_grace_period_and_revoked_at_once,
    another_tenants_keys_answer_404_on_every_route_that_takes_an_id,
    every_route_answers_every_kind_of_credential_as_the_access_table_says,
    an_ip_allow_list_refuses_other_addresses_until_the_operator_rescues_the_tenant,
    a_suspended_tenant_cannot_send_until_resumed_and_a_closed_one_cannot_authenticate,
    metas_account_restriction_pauses_every_tenant_on_that_waba_only,
    metas_restriction_of_anything_but_business_initiated_messages_pauses_no_tenant,
);

#[tokio::test]
async fn a_key_with_an_expiry_stops_authenticating_when_it_passes() {
    let clock = ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let tenant = kirim::domain::TenantId::generate();
    let req: apikeys::NewKey =
        serde_json::from_value(json!({"name": "temp", "role": "operator", "expires_in_days": 1}))
            .unwrap();
    let minted = apikeys::create(&deps, &tenant, req, kirim::ports::KeyCreator::operator())
        .await
        .unwrap();
    let caller = auth::authenticate(&deps, Some(minted.key.expose()))
        .await
        .unwrap();
    assert_eq!(
        caller,
        auth::Caller::ApiKey {
            tenant_id: tenant.clone(),
            key_id: minted.record.id.clone(),
            role: kirim::domain::Role::Operator
        }
    );
    clock.advance(chrono::Duration::hours(25));
    assert!(auth::authenticate(&deps, Some(minted.key.expose()))
        .await
        .is_err());
}

/// A message queued before its tenant was suspended is not sent: it fails, refunded.
#[tokio::test]
async fn a_message_queued_before_a_suspension_fails_refunded_without_reaching_meta() {
    use kirim::ports::TenantStatus;
    use kirim::service::{accounts, dispatch, send};
    let clock = ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai", "waba_id": "1",
        "phone_number_id": "123", "meta_access_token": "EAAG", "credits": 2}))
    .unwrap();
    let (tenant, _) = accounts::create_tenant(&deps, req).await.unwrap();
    user_wrote(&deps, &tenant).await;
    let msg: send::SendRequest =
        serde_json::from_value(json!({"to": "+60123456789", "text": {"body": "hi"}})).unwrap();
    let record = send::send(&deps, &tenant.id, msg).await.unwrap();
    accounts::set_status(
        &deps,
        &tenant.id,
        TenantStatus::Suspended,
        Some("audit".into()),
    )
    .await
    .unwrap();
    let queued = deps
        .queue
        .receive(10, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    // The Meta base URL of these settings is unreachable: a call would not be `Done` + failed.
    assert_eq!(
        dispatch::handle(&deps, &queued[0].body).await,
        kirim::service::jobs::Outcome::Done
    );
    let m = deps
        .messages
        .get_message(&tenant.id, &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, kirim::domain::MessageStatus::Failed);
    assert_eq!(m.error.unwrap().code, "tenant_suspended");
    assert_eq!(
        deps.tenants
            .get_tenant(&tenant.id)
            .await
            .unwrap()
            .unwrap()
            .credits,
        2,
        "refunded"
    );
    // The billing record says why (kept 7 years, in the tenant's export).
    let refunds: Vec<Option<String>> = deps
        .ledger
        .entries(&tenant.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kirim::ports::LedgerKind::Refund)
        .map(|e| e.reference)
        .collect();
    assert_eq!(
        refunds,
        vec![Some("message not sent: tenant_suspended".to_owned())]
    );
}

/// A message waiting out a long retry backoff on the queue (hops of up to 15 minutes) is
/// not sent after a suspension and a resume within its wait: the first hop after the
/// suspension fails it, refunded, as every queued message of the tenant's.
#[tokio::test]
async fn a_message_in_a_long_retry_backoff_fails_refunded_at_its_next_hop_after_a_suspension() {
    use kirim::ports::TenantStatus;
    use kirim::service::jobs::Outcome;
    use kirim::service::{accounts, dispatch, send};
    let clock = ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai", "waba_id": "1",
        "phone_number_id": "124", "meta_access_token": "EAAG", "credits": 2}))
    .unwrap();
    let (tenant, _) = accounts::create_tenant(&deps, req).await.unwrap();
    user_wrote(&deps, &tenant).await;
    let msg: send::SendRequest =
        serde_json::from_value(json!({"to": "+60123456789", "text": {"body": "hi"}})).unwrap();
    let record = send::send(&deps, &tenant.id, msg).await.unwrap();
    let queued = deps
        .queue
        .receive(10, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    // The job as a transient failure sends it back: not to be tried for an hour.
    let mut job: serde_json::Value = serde_json::from_str(&queued[0].body).unwrap();
    let retry_at = kirim::ports::Clock::now(clock.as_ref()) + chrono::Duration::hours(1);
    job["retry_at"] = json!(retry_at.to_rfc3339());
    let body = job.to_string();
    assert!(
        matches!(
            dispatch::handle_in_batch(&deps, &body).await,
            Outcome::Again(..)
        ),
        "an active tenant's retry waits out its backoff"
    );
    for suspended in [true, false] {
        let status = if suspended {
            TenantStatus::Suspended
        } else {
            TenantStatus::Active
        };
        accounts::set_status(&deps, &tenant.id, status, Some("audit".into()))
            .await
            .unwrap();
        if suspended {
            // Its next hop comes while the tenant is suspended.
            assert_eq!(dispatch::handle(&deps, &body).await, Outcome::Done);
        }
    }
    let m = deps
        .messages
        .get_message(&tenant.id, &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, kirim::domain::MessageStatus::Failed);
    assert_eq!(m.error.unwrap().code, "tenant_suspended");
    let credits = deps
        .tenants
        .get_tenant(&tenant.id)
        .await
        .unwrap()
        .unwrap()
        .credits;
    assert_eq!(credits, 2, "refunded");
    // Resumed before the backoff ended: a later hop of the job sends nothing.
    assert!(matches!(
        dispatch::handle_in_batch(&deps, &body).await,
        Outcome::Again(..) | Outcome::Done
    ));
    clock.advance(chrono::Duration::hours(2));
    assert_eq!(dispatch::handle(&deps, &body).await, Outcome::Done);
    let m = deps
        .messages
        .get_message(&tenant.id, &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, kirim::domain::MessageStatus::Failed, "never sent");
}

/// A secret store that can be made to fail, to test what a claim does on failure.
#[derive(Default)]
struct FlakySecrets {
    inner: std::sync::Arc<kirim::adapters::memory::MemorySecrets>,
    failing: std::sync::atomic::AtomicBool,
}

kirim_tests::pass_through! {
    impl SecretStore for FlakySecrets {
        async fn get_secret(
            &self,
            name: &str,
        ) -> Result<Option<kirim::secret::Secret>, kirim::store_error::StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(kirim::store_error::StoreError::Unavailable(
                    "secrets manager throttled".into(),
                ));
            }
            self.inner.get_secret(name).await
        }
    }
}

/// An API key's request does not depend on the operator token's secret: with Secrets
/// Manager refusing every read, the key still authenticates (it answered `503` to every
/// tenant's request once a warm copy lapsed), while a token that is no key cannot be told
/// from the operator's and answers `503`, and a key-shaped token no key has `401`.
#[tokio::test]
async fn an_api_key_authenticates_while_the_operator_tokens_secret_cannot_be_read() {
    use kirim::service::{accounts, auth, SecretCache};
    let clock = ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let secrets = std::sync::Arc::new(FlakySecrets::default());
    deps.secrets =
        std::sync::Arc::new(SecretCache::new(secrets.clone(), std::time::Duration::ZERO));
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai", "waba_id": "1",
        "phone_number_id": "125", "meta_access_token": "EAAG", "credits": 2}))
    .unwrap();
    let (tenant, key) = accounts::create_tenant(&deps, req).await.unwrap();
    secrets
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        auth::authenticate(&deps, Some(key.expose())).await,
        Ok(auth::Caller::ApiKey { tenant_id, .. }) if tenant_id == tenant.id
    ));
    assert!(matches!(
        auth::authenticate(&deps, Some("kirim_not-a-key-of-anyone")).await,
        Err(kirim::service::errors::ServiceError::Unauthenticated)
    ));
    assert!(matches!(
        auth::authenticate(&deps, Some("perhaps-the-operator")).await,
        Err(kirim::service::errors::ServiceError::Unavailable(_))
    ));
}

/// A message whose Meta token cannot be read is left `accepted` and unclaimed (the checks
/// run before the claim), so the retry sends it (a claim left `sending` would be dropped as
/// a duplicate: never sent).
#[tokio::test]
async fn a_secret_store_failure_before_the_claim_leaves_the_message_retryable() {
    use kirim::service::{accounts, dispatch, send, SecretCache};
    let clock = ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let secrets = std::sync::Arc::new(FlakySecrets::default());
    deps.secrets =
        std::sync::Arc::new(SecretCache::new(secrets.clone(), std::time::Duration::ZERO));
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai", "waba_id": "1",
        "phone_number_id": "124", "meta_access_token": "EAAG", "credits": 2}))
    .unwrap();
    let (tenant, _) = accounts::create_tenant(&deps, req).await.unwrap();
    user_wrote(&deps, &tenant).await;
    let msg: send::SendRequest =
        serde_json::from_value(json!({"to": "+60123456789", "text": {"body": "hi"}})).unwrap();
    let record = send::send(&deps, &tenant.id, msg).await.unwrap();
    let queued = deps
        .queue
        .receive(10, std::time::Duration::ZERO)
        .await
        .unwrap();
    secrets
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        dispatch::handle(&deps, &queued[0].body).await,
        kirim::service::jobs::Outcome::Backoff(_)
    ));
    let m = deps
        .messages
        .get_message(&tenant.id, &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.status,
        kirim::domain::MessageStatus::Accepted,
        "unclaimed for the retry"
    );
    assert_eq!(m.attempts, 0, "no attempt was made");
    secrets
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // The retry claims it again and reaches the (here unreachable) Meta API: retried
    // as a fresh queue message.
    assert!(matches!(
        dispatch::handle_in_batch(&deps, &queued[0].body).await,
        kirim::service::jobs::Outcome::Again(..)
    ));
    let m = deps
        .messages
        .get_message(&tenant.id, &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.attempts, 1);
    assert_eq!(m.error.map(|e| e.code), Some("meta_unreachable".into()));
}

/// On Lambda the client address is API Gateway's `requestContext.http.sourceIp`; an
/// `X-Forwarded-For` header the caller sent is never believed.
#[tokio::test]
async fn on_lambda_the_allow_list_checks_api_gateways_source_ip_not_forwarded_headers() {
    use kirim::service::accounts;
    use tower::ServiceExt;
    let deps =
        kirim::wiring::memory_deps(kirim_tests::test_settings(), ManualClock::new()).unwrap();
    deps.secrets
        .put(
            &deps.settings.operator_token_secret,
            &kirim::secret::Secret::new("op"),
        )
        .await
        .unwrap();
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai", "waba_id": "1",
        "phone_number_id": "125", "meta_access_token": "EAAG"}))
    .unwrap();
    let (tenant, key) = accounts::create_tenant(&deps, req).await.unwrap();
    let body: accounts::AllowListBody =
        serde_json::from_value(json!({"cidrs": ["203.0.113.0/24"]})).unwrap();
    accounts::set_ip_allowlist(&deps, &tenant.id, body)
        .await
        .unwrap();
    let router = kirim::http::lambda::for_lambda(kirim::http::send_api_router(deps));
    let event = |source_ip: &str| {
        json!({
            "version": "2.0", "routeKey": "GET /v1/account", "rawPath": "/v1/account", "rawQueryString": "",
            "headers": {"authorization": format!("Bearer {}", key.expose()), "x-forwarded-for": "203.0.113.5"},
            "requestContext": {"accountId": "123456789012", "apiId": "api", "domainName": "api.example", "domainPrefix": "api",
                "http": {"method": "GET", "path": "/v1/account", "protocol": "HTTP/1.1", "sourceIp": source_ip, "userAgent": "curl"},
                "requestId": "req-1", "routeKey": "GET /v1/account", "stage": "$default", "time": "25/Nov/2026:19:00:00 +0000", "timeEpoch": 1795633200000i64},
            "isBase64Encoded": false
        })
        .to_string()
    };
    let status = |source_ip: &'static str| {
        let router = router.clone();
        let ev = event(source_ip);
        async move {
            let req = lambda_http::request::from_str(&ev).unwrap();
            let req = req.map(|b| axum::body::Body::from(b.to_vec()));
            let res = router.oneshot(req).await.unwrap();
            let rid = res
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (res.status().as_u16(), rid)
        }
    };
    let (s, rid) = status("198.51.100.7").await;
    assert_eq!(s, 403, "the forwarded header does not open the list");
    assert_eq!(
        rid.as_deref(),
        Some("req-1"),
        "API Gateway's request id is the request id"
    );
    assert_eq!(status("203.0.113.9").await.0, 200);
}

/// After a rotation the previous operator token and Meta app secret still work for the
/// configured grace window (`KIRIM_ROTATION_GRACE`), and not after it: here a day, and
/// none at all.
async fn previous_credentials_are_accepted_only_within_the_rotation_grace(b: Backend) {
    use std::time::Duration;
    for (grace, previous_accepted) in [
        (Duration::from_secs(24 * 3600), true),
        (Duration::ZERO, false),
    ] {
        let mut cfg = kirim_tests::local_config(b).await;
        cfg.settings.rotation_grace = grace;
        let app = kirim_tests::spawn_with(cfg).await;
        let deps = &app.app.deps;
        let s = &deps.settings;
        deps.secrets
            .put(
                &s.operator_token_secret,
                &kirim::secret::Secret::new("op_rotated"),
            )
            .await
            .unwrap();
        deps.secrets
            .put(
                &s.meta_app_secret,
                &kirim::secret::Secret::new("app-secret-rotated"),
            )
            .await
            .unwrap();
        // An unknown tenant: 404 to the operator, 401 to anyone else.
        let health = |token: &'static str| {
            app.http
                .post(app.url("/v1/platform/tenants/01JABCDEFGHJKMNPQRSTVWXYZ0/suspend"))
                .bearer_auth(token)
                .json(&json!({"reason": "check"}))
                .send()
        };
        let status = |token| async move { health(token).await.unwrap().status().as_u16() };
        assert_ne!(status("op_rotated").await, 401, "the new token works");
        assert_eq!(
            status(kirim_tests::OPERATOR_TOKEN).await != 401,
            previous_accepted,
            "the old token, grace {grace:?}"
        );
        let signed_with_old = kirim::service::webhook::verify_signature(
            deps,
            b"{}",
            Some(&kirim_tests::sign_with(kirim_tests::META_APP_SECRET, b"{}")),
        )
        .await
        .unwrap();
        assert_eq!(
            signed_with_old, previous_accepted,
            "the old app secret, grace {grace:?}"
        );
    }
}

/// +60123456789 wrote to the tenant's number just now (its 24-hour window is open).
async fn user_wrote(deps: &kirim::service::Deps, tenant: &kirim::ports::Tenant) {
    let from = kirim::domain::OptOutKey::parse("+60123456789").unwrap();
    kirim::service::contacts::user_wrote(deps, &tenant.id, &tenant.phone_number_id, &[from], None)
        .await
        .unwrap();
}

/// The tenant store, whose status changes fail (storage unavailable), and whose reads of
/// a tenant fail too when `reads` is set.
pub(crate) struct StatusChangesFail(pub std::sync::Arc<dyn kirim::ports::TenantStore>, pub bool);

fn storage_down() -> kirim::store_error::StoreError {
    kirim::store_error::StoreError::Unavailable("storage is down".into())
}

kirim_tests::pass_through! {
    impl TenantStore for StatusChangesFail via 0 {
        async fn get_tenant(
            &self,
            id: &kirim::domain::TenantId,
        ) -> Result<Option<kirim::ports::Tenant>, kirim::store_error::StoreError> {
            if self.1 {
                return Err(storage_down());
            }
            self.0.get_tenant(id).await
        }
        async fn set_status(
            &self,
            _id: &kirim::domain::TenantId,
            _to: kirim::ports::TenantStatus,
            _reason: Option<&str>,
            _at: chrono::DateTime<chrono::Utc>,
        ) -> Result<kirim::ports::Tenant, kirim::store_error::StoreError> {
            Err(storage_down())
        }
        async fn suspend_if_unchanged(
            &self,
            _id: &kirim::domain::TenantId,
            _reason: &str,
            _at: chrono::DateTime<chrono::Utc>,
            _seen: Option<chrono::DateTime<chrono::Utc>>,
        ) -> Result<Option<kirim::ports::Tenant>, kirim::store_error::StoreError> {
            Err(storage_down())
        }
    }
}

/// Meta's account restriction is acknowledged only once the suspension is written: a
/// storage failure is an error of the webhook (answered 500, so Meta delivers it again),
/// not an item counted as applied.
#[tokio::test]
async fn an_account_restriction_that_cannot_be_written_is_not_acknowledged() {
    use kirim::service::{accounts, webhook};
    let mut deps =
        kirim::wiring::memory_deps(kirim_tests::test_settings(), ManualClock::new()).unwrap();
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai",
        "waba_id": "7011", "phone_number_id": "7011001", "meta_access_token": "EAAG"}))
    .unwrap();
    accounts::create_tenant(&deps, req).await.unwrap();
    deps.tenants = std::sync::Arc::new(StatusChangesFail(deps.tenants.clone(), false));
    let body = json!({"object": "whatsapp_business_account",
        "entry": [{"id": "7011", "time": 1700000000, "changes": [{"field": "account_update",
        "value": {"event": "ACCOUNT_RESTRICTION", "restriction_info": [
            {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1900000000}]}}]}]});
    let summary = webhook::apply(&deps, body.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!((summary.errors, summary.applied), (1, 0));
}

/// An access check that fails for want of a secret is an outage, not a refused
/// credential: `503`, audited as an `error` (a burst of them must not read, in the audit
/// trail, as a burst of forged tokens).
#[tokio::test]
async fn an_access_check_the_secret_store_fails_is_audited_as_an_error_not_a_denial() {
    use tower::ServiceExt;
    let clock = ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let secrets = kirim::adapters::memory::MemorySecrets::default();
    for (name, value) in [
        (
            deps.settings.audit_key_secret.clone(),
            "audit-key-0123456789abcdef",
        ),
        (deps.settings.operator_token_secret.clone(), "op-token"),
    ] {
        kirim::ports::SecretStore::put_secret(&secrets, &name, &kirim::secret::Secret::new(value))
            .await
            .unwrap();
    }
    deps.secrets = std::sync::Arc::new(kirim::service::SecretCache::new(
        std::sync::Arc::new(kirim_tests::ScriptedSecrets {
            reads: kirim_tests::Refuse::Containing(
                kirim_tests::test_settings().operator_token_secret,
            ),
            ..kirim_tests::ScriptedSecrets::over(std::sync::Arc::new(secrets))
        }),
        std::time::Duration::ZERO,
    ));
    let res = kirim::http::admin_api_router(deps.clone())
        .oneshot(
            axum::http::Request::builder()
                .method("POST")
                .uri("/v1/platform/retention/run")
                .header("authorization", "Bearer op-token")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let (events, _) = deps
        .audit
        .list(
            "platform",
            &kirim::ports::AuditQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let event = events.first().expect("the refusal is audited");
    assert_eq!(event.action, "POST /v1/platform/retention/run");
    assert_eq!(
        event.outcome,
        kirim::ports::AuditOutcome::Error,
        "{event:?}"
    );
}

/// A valid key used from an address its tenant's allow-list refuses (a leaked key), or a
/// tenant key on an operator route, is refused before any per-key limit counts it: such
/// refusals are counted against the address as refused credentials are, so a flood of them
/// is answered `429` and stops writing to the tenant's audit chain (which the tenant's own
/// sends append to).
async fn a_leaked_key_flooding_from_a_refused_address_waits_and_stops_writing_audit_events(
    b: Backend,
) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.limits.bad_credentials = 5;
    cfg.settings.limits.bad_credentials_refill_secs = 3600;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(0).await;
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/settings/ip-allowlist",
        Some(&t.key),
        Some(json!({"cidrs": ["203.0.113.0/24"]})),
    )
    .await;
    assert_eq!(s, 200);
    let deps = app.app.deps.clone();
    let chain = |id: String| {
        let deps = deps.clone();
        async move { deps.audit.head(&id).await.unwrap().map_or(0, |h| h.seq) }
    };
    let before = chain(t.tenant_id.clone()).await;
    let mut answers = Vec::new();
    for i in 0..12 {
        let (m, p) = if i % 2 == 0 {
            ("GET", "/v1/account")
        } else {
            ("POST", "/v1/platform/tenants")
        };
        answers.push(call(&app, m, p, Some(&t.key), Some(json!({}))).await.0);
    }
    assert_eq!(answers[..5], [403; 5], "{answers:?}");
    assert!(answers[5..].iter().all(|s| *s == 429), "{answers:?}");
    assert_eq!(
        chain(t.tenant_id.clone()).await,
        before + 5,
        "only the five refusals audited on the tenant's chain"
    );
    // The operator's token from the same address is not held, and lifts the lock-out.
    let (s, b_) = call(
        &app,
        "PUT",
        &format!("/v1/platform/tenants/{}/ip-allowlist", t.tenant_id),
        Some(OPERATOR_TOKEN),
        Some(json!({"cidrs": []})),
    )
    .await;
    assert_eq!(s, 200, "{b_}");
}

/// Refused credentials from one address (no key, an unknown key, a bad session) are each
/// answered `401` and audited until the address's allowance is spent; then its refusals
/// are answered `429` with `Retry-After`, and nothing more is written to the platform
/// audit chain. A valid key from that address is not held: another client behind it is
/// not slowed by this one's flood.
async fn an_address_flooding_bad_credentials_waits_and_stops_writing_audit_events(b: Backend) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.limits.bad_credentials = 5;
    cfg.settings.limits.bad_credentials_refill_secs = 3600;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(0).await;
    let platform = |app: &TestApp| {
        let deps = app.app.deps.clone();
        async move {
            deps.audit
                .head(kirim::service::audit::PLATFORM_CHAIN)
                .await
                .unwrap()
                .map_or(0, |h| h.seq)
        }
    };
    let before = platform(&app).await;
    let mut answers = Vec::new();
    for i in 0..12 {
        let token = (i % 2 == 0).then_some("kirim_not_a_key");
        answers.push(call(&app, "GET", "/v1/account", token, None).await.0);
    }
    assert_eq!(answers[..5], [401; 5], "{answers:?}");
    assert!(answers[5..].iter().all(|s| *s == 429), "{answers:?}");
    let res = app
        .http
        .get(app.url("/v1/account"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "a valid key from the address is not held"
    );
    let (s, _) = call(&app, "GET", "/v1/account", Some("kirim_still_not"), None).await;
    assert_eq!(s, 429);
    let res = app.http.get(app.url("/v1/account")).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(
        platform(&app).await,
        before + 5,
        "only the five refusals audited"
    );
    // Health and login need no credentials and are not held.
    assert_eq!(call(&app, "GET", "/health", None, None).await.0, 200);
}

/// The README's access table names every route in the row of exactly the access the route
/// table gives it, and nothing else: a reader deciding which key a client needs reads it.
#[test]
fn the_readmes_access_table_names_every_route_under_its_access_and_no_other() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split("| access | routes |")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("the access table");
    let rows: Vec<(&str, &str)> = table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() >= 3 && !cells[1].starts_with("---")).then(|| (cells[1], cells[2]))
        })
        .collect();
    let label = |a: Access| match a {
        Access::Public => "anyone",
        Access::Meta => "Meta (its signature or verify token)",
        Access::Platform => "platform operator token",
        Access::Tenant(kirim::domain::Role::ReadOnly) => "`read_only`",
        Access::Tenant(kirim::domain::Role::Operator) => "`operator`",
        Access::Tenant(kirim::domain::Role::Admin) => "`admin`",
        Access::Session => "a console session of any role (its own; not an API key)",
    };
    let mut named = 0;
    for rule in ROUTES {
        let entry = format!("`{} {}`", rule.method, rule.path);
        let rows_naming: Vec<&str> = rows
            .iter()
            .filter(|(_, routes)| routes.split(", ").any(|r| r == entry))
            .map(|(access, _)| *access)
            .collect();
        assert_eq!(rows_naming, vec![label(rule.access)], "{entry}");
        named += 1;
    }
    let listed: usize = rows.iter().map(|(_, r)| r.split(", ").count()).sum();
    assert_eq!(listed, named, "the table lists only the routes there are");
}

/// A path parameter that decodes to invalid UTF-8 (`%FF`) is an id Kirim never issued:
/// `404 not_found` on every route that takes one (`400 invalid_phone_number` for an
/// opt-out key, which is neither a phone nor a user id), as the document says, not axum's
/// bare `400` — and nothing changes.
#[tokio::test]
async fn a_path_id_that_is_not_utf8_answers_as_an_id_never_issued() {
    let app = kirim_tests::spawn_app(Backend::Memory).await;
    let t = app.onboard(5).await;
    let mut checked = 0;
    for rule in ROUTES {
        if !rule.path.contains('{') {
            continue;
        }
        let token = match rule.access {
            Access::Platform => OPERATOR_TOKEN,
            Access::Tenant(_) => t.key.as_str(),
            _ => continue,
        };
        let path = rule
            .path
            .split('/')
            .map(|seg| match seg.find('{') {
                Some(i) => {
                    let end = seg.find('}').map_or(seg.len(), |e| e + 1);
                    format!("{}%FF{}", &seg[..i], &seg[end..])
                }
                None => seg.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        let body = matches!(rule.method, "POST" | "PUT" | "PATCH").then(|| json!({}));
        let (status, answer) = call(&app, rule.method, &path, Some(token), body).await;
        let want = if rule.path.starts_with("/v1/opt-outs/") {
            (400, "invalid_phone_number")
        } else {
            (404, "not_found")
        };
        assert_eq!(
            (status, code(&answer)),
            want,
            "{} {path}: {answer}",
            rule.method
        );
        checked += 1;
    }
    assert!(checked > 20, "{checked}");
    assert_eq!(app.credits(&t.key).await, 5, "nothing changed");
}

/// A query parameter given twice is refused, naming it, as an unknown one is: serde kept
/// the last silently, so `limit=1000&limit=10` (1000 alone is refused) answered 10, and
/// `status=failed&status=read` filtered on `read` alone.
#[tokio::test]
async fn a_query_parameter_given_twice_is_refused_naming_it() {
    let app = kirim_tests::spawn_app(Backend::Memory).await;
    let t = app.onboard(5).await;
    for path in [
        "/v1/messages?limit=1000&limit=10",
        "/v1/messages?status=failed&status=read",
        "/v1/opt-outs?limit=5&limit=5",
        "/v1/audit?limit=1&limit=2",
    ] {
        let (status, body) = call(&app, "GET", path, Some(&t.key), None).await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_request"),
            "{path}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("given more than once")),
            "{path}: {body}"
        );
    }
    let (status, _) = call(
        &app,
        "GET",
        "/v1/messages?limit=10&status=read",
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(status, 200, "each once: as before");
}

/// `HEAD` on a `GET` route is that route, with its access, and no body (RFC 9110: a server
/// that answers GET answers HEAD): it answered 405 as a method the table did not open.
#[tokio::test]
async fn head_on_a_get_route_answers_as_get_does_without_a_body() {
    let app = kirim_tests::spawn_app(Backend::Memory).await;
    let t = app.onboard(5).await;
    let head = |token: Option<String>| {
        let mut req = app.http.head(app.url("/v1/account"));
        if let Some(tok) = token {
            req = req.bearer_auth(tok);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.bytes().await.unwrap().len())
        }
    };
    assert_eq!(head(Some(t.key.clone())).await, (200, 0));
    assert_eq!(head(None).await.0, 401, "its access: GET's");
    let (status, _) = call(
        &app,
        "HEAD",
        "/v1/messages/01J9Z8Q4S7YF2K3M5N6P7R8T9W",
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(status, 404);
}
