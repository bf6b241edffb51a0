//! `openapi.yaml` and the code agree (issue 14, item 10; `scripts/schemathesis` checks the
//! whole document): each mismatch schemathesis found, pinned by a test. `null` is refused
//! where the document forbids it, with nothing written; every integer the document allows
//! (`90.0` is one, to JSON Schema) is taken; a CSV upload's `template_category` is one of
//! the three names exactly; the status callback's `url` is required and its secret is
//! checked whatever the url; and the audit trail's events, whoever acted, match the
//! document's `AuditEvent`.

use kirim::config::Backend;
use kirim_tests::{spawn_app, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let res = app
        .http
        .request(method, app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn get(app: &TestApp, path: &str, token: &str) -> Value {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn assert_invalid_naming(answer: &(u16, Value), field: &str) {
    assert_eq!(answer.0, 400, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], "invalid_request", "{}", answer.1);
    let message = answer.1["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(field), "names `{field}`: {}", answer.1);
}

async fn null_in_an_optional_request_field_answers_400_and_writes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let post = reqwest::Method::POST;

    // A send with `client_reference: null` (or `from`, `send_at`, `template`, `text`).
    let template = json!({"name": "order_update", "language": "en_US",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]});
    for field in ["client_reference", "from", "send_at", "text"] {
        let mut body = json!({"to": "+60123456789", "template": template});
        body[field] = Value::Null;
        let answer = send(&app, post.clone(), "/v1/messages", &t.key, body).await;
        assert_invalid_naming(&answer, field);
    }
    let mut category_null = template.clone();
    category_null["category"] = Value::Null;
    let answer = send(
        &app,
        post.clone(),
        "/v1/messages",
        &t.key,
        json!({"to": "+60123456789", "template": category_null}),
    )
    .await;
    assert_invalid_naming(&answer, "template.category");
    assert_eq!(app.credits(&t.key).await, 5, "nothing debited");
    let messages = get(&app, "/v1/messages", &t.key).await;
    assert_eq!(messages["messages"], json!([]), "no message recorded");
    assert!(app.app.sandbox.received().is_empty(), "nothing sent");

    // An API key with `expires_in_days: null`; a rotation with `grace_period_hours: null`.
    let keys_before = get(&app, "/v1/api-keys", &t.key).await["api_keys"].clone();
    let answer = send(
        &app,
        post.clone(),
        "/v1/api-keys",
        &t.key,
        json!({"name": "ci", "role": "read_only", "expires_in_days": null}),
    )
    .await;
    assert_invalid_naming(&answer, "expires_in_days");
    let own_id = keys_before[0]["id"].as_str().unwrap().to_owned();
    let answer = send(
        &app,
        post.clone(),
        &format!("/v1/api-keys/{own_id}/rotate"),
        &t.key,
        json!({"grace_period_hours": null}),
    )
    .await;
    assert_invalid_naming(&answer, "grace_period_hours");
    assert_eq!(
        get(&app, "/v1/api-keys", &t.key).await["api_keys"],
        keys_before,
        "no key created or rotated"
    );

    // An opt-out with `scope: null`.
    let answer = send(
        &app,
        reqwest::Method::PUT,
        "/v1/opt-outs/%2B60123456789",
        &t.key,
        json!({"scope": null}),
    )
    .await;
    assert_invalid_naming(&answer, "scope");
    let res = app
        .http
        .get(app.url("/v1/opt-outs/%2B60123456789"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "no opt-out written");

    // A tenant with `credits: null`; a second number with `display_phone_number: null`.
    let answer = send(
        &app,
        post.clone(),
        "/v1/platform/tenants",
        OPERATOR_TOKEN,
        json!({"name": "Null Sdn Bhd", "waba_id": "1000009", "phone_number_id": "900000000000009",
               "meta_access_token": "EAAG-null", "credits": null}),
    )
    .await;
    assert_invalid_naming(&answer, "credits");
    let answer = send(
        &app,
        post.clone(),
        &format!("/v1/platform/tenants/{}/phone-numbers", t.tenant_id),
        OPERATOR_TOKEN,
        json!({"phone_number_id": "900000000000009", "waba_id": "1000001",
               "display_phone_number": null}),
    )
    .await;
    assert_invalid_naming(&answer, "display_phone_number");
    let numbers = get(&app, "/v1/phone-numbers", &t.key).await;
    assert_eq!(
        numbers["phone_numbers"].as_array().map(Vec::len),
        Some(1),
        "no number added: {numbers}"
    );
    // The phone number id is still free: no tenant was created with it.
    let (status, _) = send(
        &app,
        post.clone(),
        "/v1/platform/tenants",
        OPERATOR_TOKEN,
        json!({"name": "Null Sdn Bhd", "waba_id": "1000009", "phone_number_id": "900000000000009",
               "meta_access_token": "EAAG-null"}),
    )
    .await;
    assert_eq!(status, 201);
}

async fn an_integer_written_as_90_0_is_taken_and_a_fraction_is_refused(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let post = reqwest::Method::POST;

    let (status, key) = send(
        &app,
        post.clone(),
        "/v1/api-keys",
        &t.key,
        json!({"name": "ci", "role": "read_only", "expires_in_days": 90.0}),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let created =
        chrono::DateTime::parse_from_rfc3339(key["created_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(key["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_days(), 90);
    let answer = send(
        &app,
        post.clone(),
        "/v1/api-keys",
        &t.key,
        json!({"name": "ci", "role": "read_only", "expires_in_days": 90.5}),
    )
    .await;
    assert_invalid_naming(&answer, "expires_in_days");

    let credits = format!("/v1/platform/tenants/{}/credits", t.tenant_id);
    let (status, topped) = send(
        &app,
        post.clone(),
        &credits,
        OPERATOR_TOKEN,
        json!({"amount": 10.0, "reference": "INV-1"}),
    )
    .await;
    assert_eq!((status, &topped["balance"]), (201, &json!(15)), "{topped}");
    let answer = send(
        &app,
        post.clone(),
        &credits,
        OPERATOR_TOKEN,
        json!({"amount": 2.5, "reference": "INV-2"}),
    )
    .await;
    assert_invalid_naming(&answer, "amount");
    assert_eq!(
        app.credits(&t.key).await,
        15,
        "the fraction debited nothing"
    );

    let (status, limits) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/platform/tenants/{}/limits", t.tenant_id),
        OPERATOR_TOKEN,
        json!({"requests_per_sec": 200.0, "burst": 4e2}),
    )
    .await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(
        (&limits["requests_per_sec"], &limits["burst"]),
        (&json!(200), &json!(400))
    );
}

async fn a_csv_uploads_template_category_is_one_of_the_three_names_exactly(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    app.sandbox_template(
        "1000001",
        "pending_notice",
        "en_US",
        json!({"status": "approved"}),
    )
    .await;
    for category in ["%22utility%22", "util%22ity", "Utility", ""] {
        let res = app
            .http
            .post(app.url(&format!(
                "/v1/broadcasts?template_name=pending_notice&template_language=en_US&template_category={category}"
            )))
            .bearer_auth(&t.key)
            .header("content-type", "text/csv")
            .body("phone\n+60123455001\n")
            .send()
            .await
            .unwrap();
        let answer = (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        );
        assert_invalid_naming(&answer, "template_category");
    }
    assert_eq!(app.credits(&t.key).await, 5, "nothing debited");
    let list = get(&app, "/v1/broadcasts", &t.key).await;
    assert_eq!(list["broadcasts"], json!([]), "no broadcast created");
}

async fn the_status_callbacks_url_is_required_and_its_secret_checked_whatever_the_url(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let put = reqwest::Method::PUT;
    let path = "/v1/settings/status-callback";
    let url = "http://127.0.0.1:9/kirim/status";
    let (status, set) = send(
        &app,
        put.clone(),
        path,
        &t.key,
        json!({"url": url, "secret": "whsec_2b7f0c1e9a4d4e8f"}),
    )
    .await;
    assert_eq!(status, 200, "{set}");

    // Leaving `url` out no longer turns callbacks off; `null` still does (below).
    let answer = send(&app, put.clone(), path, &t.key, json!({})).await;
    assert_invalid_naming(&answer, "url");
    let answer = send(
        &app,
        put.clone(),
        path,
        &t.key,
        json!({"secret": "whsec_2b7f0c1e9a4d4e8f"}),
    )
    .await;
    assert_invalid_naming(&answer, "url");
    // A bad secret is refused even with `url: null`, and changes nothing.
    let answer = send(
        &app,
        put.clone(),
        path,
        &t.key,
        json!({"url": null, "secret": "short"}),
    )
    .await;
    assert_invalid_naming(&answer, "secret");
    let answer = send(
        &app,
        put.clone(),
        path,
        &t.key,
        json!({"url": url, "secret": null}),
    )
    .await;
    assert_invalid_naming(&answer, "secret");
    assert_eq!(
        get(&app, path, &t.key).await,
        json!({"url": url, "secret_set": true}),
        "the callback is unchanged"
    );

    let (status, off) = send(&app, put, path, &t.key, json!({"url": null})).await;
    assert_eq!(
        (status, off),
        (200, json!({"url": null, "secret_set": false}))
    );
}

/// The document's schema of one response, as a compiled JSON Schema (OpenAPI 3.1 schemas
/// are JSON Schema 2020-12; `$ref`s resolve against the document's components).
fn response_validator(path: &str, method: &str, status: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
        .expect("openapi.yaml is readable");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("openapi.yaml is YAML");
    let doc: Value = serde_json::to_value(yaml).expect("openapi.yaml is JSON-compatible");
    let pointer = format!(
        "/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        path.replace('~', "~0").replace('/', "~1")
    );
    let schema = doc
        .pointer(&pointer)
        .expect("the document has the response")
        .clone();
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": doc["components"],
    });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .expect("the response schema compiles")
}

async fn every_audit_event_matches_the_documents_audit_event_whoever_acted(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let post = reqwest::Method::POST;
    let email = "audit-user@example.com";
    let password = "correct horse battery staple";
    let (status, _) = send(
        &app,
        post.clone(),
        "/v1/users",
        &t.key,
        json!({"email": email, "role": "admin", "password": password}),
    )
    .await;
    assert_eq!(status, 201);
    // A console user signs in (actor `user`), fails to once, and acts with the session.
    let (status, login) = app_login(&app, email, password).await;
    assert_eq!(status, 200, "{login}");
    let (status, _) = app_login(&app, email, "not the password at all").await;
    assert_eq!(status, 401);
    let session = login["token"].as_str().unwrap().to_owned();
    let (status, _) = send(
        &app,
        post.clone(),
        "/v1/api-keys",
        &session,
        json!({"name": "from the console", "role": "read_only"}),
    )
    .await;
    assert_eq!(status, 201);
    // An API key acts, is refused a role it lacks, and the operator acts on the tenant.
    let (status, key) = send(
        &app,
        post.clone(),
        "/v1/api-keys",
        &t.key,
        json!({"name": "reader", "role": "read_only"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = send(
        &app,
        post.clone(),
        "/v1/messages",
        key["key"].as_str().unwrap(),
        json!({"to": "+60123456789", "text": {"body": "hi"}}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        &app,
        post,
        &format!("/v1/platform/tenants/{}/credits", t.tenant_id),
        OPERATOR_TOKEN,
        json!({"amount": 1, "reference": "INV-9"}),
    )
    .await;
    assert_eq!(status, 201);

    let page = get(&app, "/v1/audit", &t.key).await;
    let actors: std::collections::BTreeSet<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["actor"]["type"].as_str())
        .collect();
    for who in ["user", "api_key", "operator"] {
        assert!(actors.contains(who), "an event by `{who}`: {actors:?}");
    }
    let validator = response_validator("/v1/audit", "get", "200");
    let errors: Vec<String> = validator
        .iter_errors(&page)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "GET /v1/audit answered outside the document: {errors:?}"
    );
}

async fn app_login(app: &TestApp, email: &str, password: &str) -> (u16, Value) {
    let res = app
        .http
        .post(app.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

on_both_backends!(
    every_audit_event_matches_the_documents_audit_event_whoever_acted,
    null_in_an_optional_request_field_answers_400_and_writes_nothing,
    an_integer_written_as_90_0_is_taken_and_a_fraction_is_refused,
    a_csv_uploads_template_category_is_one_of_the_three_names_exactly,
    the_status_callbacks_url_is_required_and_its_secret_checked_whatever_the_url,
);

/// The document as JSON.
fn openapi_doc() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
        .expect("openapi.yaml is readable");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("openapi.yaml is YAML");
    serde_json::to_value(yaml).expect("openapi.yaml is JSON-compatible")
}

/// Every route a credential reaches documents `429`: every key and session request is
/// counted (per key and tenant), and every credential refused past the address's allowance
/// is answered 429, the operator's included. A tenant route's `403` names the codes the
/// access check answers there (`ip_not_allowed`, `totp_enrollment_required`), not only
/// `forbidden`: generated clients read these.
#[test]
fn every_credentialed_route_documents_429_and_a_tenant_routes_403_names_the_access_codes() {
    use kirim::http::access::{Access, ROUTES};
    let doc = openapi_doc();
    for rule in ROUTES {
        if matches!(rule.access, Access::Public | Access::Meta) {
            continue;
        }
        let pointer = format!(
            "/paths/{}/{}/responses",
            rule.path.replace('~', "~0").replace('/', "~1"),
            rule.method.to_lowercase()
        );
        let responses = doc
            .pointer(&pointer)
            .unwrap_or_else(|| panic!("{} {} documented", rule.method, rule.path));
        assert!(
            responses.get("429").is_some(),
            "{} {}: 429",
            rule.method,
            rule.path
        );
        if let Access::Tenant(_) = rule.access {
            let forbidden = responses["403"]["$ref"].as_str().unwrap_or("inline");
            assert!(
                forbidden.ends_with("/TenantForbidden") || forbidden.ends_with("/SendForbidden"),
                "{} {}: 403 is {forbidden}",
                rule.method,
                rule.path
            );
        }
    }
}
