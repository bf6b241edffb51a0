//! The contract's edges over HTTP: errors in one shape, bad input changes nothing,
//! tenants cannot see each other, webhooks must be signed.

use kirim::config::Backend;
use kirim_tests::{spawn_app, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};

async fn error_of(res: reqwest::Response) -> (u16, String, Value) {
    let status = res.status().as_u16();
    let rid = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(
        body["request_id"],
        rid.as_str(),
        "error body carries the x-request-id: {body}"
    );
    assert!(body["error"]["message"].is_string());
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
        body,
    )
}

async fn post_raw(app: &TestApp, key: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.http
        .post(app.url("/v1/messages"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A template send to a good number with `components` as given.
fn template_with(components: &str) -> Vec<u8> {
    format!(
        r#"{{"to":"+60123456789","template":{{"name":"order_update","language":"en_US","category":"utility","components":{components}}}}}"#
    )
    .into_bytes()
}

async fn bad_send_requests_answer_precise_errors_and_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_request"),
        (b"".to_vec(), 400, "invalid_request"),
        // More after the value: one request's body, not the first of several.
        (
            br#"{"to":"+60123456789","text":{"body":"x"}} x"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            br#"{"to":"+60123456789","text":{"body":"x"}}{"to":"+60123456780"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            br#"{"to":"+60123456789","text":{"body":"x"},"admin":true}"#.to_vec(),
            400,
            "invalid_request",
        ),
        // Not a string: no E.164 number either (API.md: anything else is this code).
        (
            br#"{"to":60123456789,"text":{"body":"x"}}"#.to_vec(),
            400,
            "invalid_phone_number",
        ),
        (
            br#"{"to":null,"text":{"body":"x"}}"#.to_vec(),
            400,
            "invalid_phone_number",
        ),
        (
            br#"{"to":"0123456789","text":{"body":"x"}}"#.to_vec(),
            400,
            "invalid_phone_number",
        ),
        (
            br#"{"to":"+60 12345","text":{"body":"x"}}"#.to_vec(),
            400,
            "invalid_phone_number",
        ),
        // A country code no country has: not E.164 (it was taken and debited).
        (
            br#"{"to":"+999123456789","text":{"body":"x"}}"#.to_vec(),
            400,
            "invalid_phone_number",
        ),
        (br#"{"to":"+60123456789"}"#.to_vec(), 400, "invalid_request"),
        (
            br#"{"to":"+60123456789","template":{"name":"x","language":"en","category":"spam"}}"#
                .to_vec(),
            400,
            "invalid_request",
        ),
        (
            format!(
                r#"{{"to":"+60123456789","text":{{"body":"{}"}}}}"#,
                "a".repeat(300 * 1024)
            )
            .into_bytes(),
            413,
            "payload_too_large",
        ),
        // Template components of shapes Meta's spec refuses: refused before any debit,
        // not accepted, charged and failed by Meta.
        (
            template_with(r#"[{"type":"body","parameters":["x",1]}]"#),
            400,
            "invalid_request",
        ),
        (
            template_with(r#"[{"type":"body","parameters":[{"text":"no type"}]}]"#),
            400,
            "invalid_request",
        ),
        (
            template_with(r#"[{"parameters":[{"type":"text","text":"x"}]}]"#),
            400,
            "invalid_request",
        ),
        (
            template_with(r#"[{"type":"body","parameters":{"type":"text","text":"x"}}]"#),
            400,
            "invalid_request",
        ),
        (
            template_with(r#"[{"type":"body","parameters":[{"type":"text","text":7}]}]"#),
            400,
            "invalid_request",
        ),
        (
            template_with(&format!(
                r#"[{{"type":"body","parameters":[{{"type":"text","text":"{}"}}]}}]"#,
                "a".repeat(32_769)
            )),
            400,
            "invalid_request",
        ),
        (
            template_with(r#"[{"type":"button","parameters":[{"type":"payload","payload":"p"}]}]"#),
            400,
            "invalid_request",
        ),
        // A reference a receiver or the console would show otherwise than it is: a control
        // character, a direction override.
        (
            br#"{"to":"+60123456789","text":{"body":"x"},"client_reference":"a\u0000b"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            br#"{"to":"+60123456789","text":{"body":"x"},"client_reference":"\u202egnp.exe"}"#
                .to_vec(),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let res = post_raw(&app, &t.key, body).await;
        let (s, c, full) = error_of(res).await;
        assert_eq!((s, c.as_str()), (status, code), "{full}");
    }
    // A wrong-typed value is named by its path, never echoed (it may be content).
    let res = post_raw(
        &app,
        &t.key,
        r#"{"to":"+60123456789","text":{"body":["SECRET-CONTENT"]}}"#,
    )
    .await;
    let (_, _, full) = error_of(res).await;
    assert!(!full.to_string().contains("SECRET-CONTENT"));
    assert!(
        full["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text.body"),
        "{full}"
    );

    assert_eq!(app.credits(&t.key).await, 5, "nothing debited");
    let list: Value = app
        .http
        .get(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["messages"].as_array().map(Vec::len),
        Some(0),
        "nothing recorded"
    );
    assert!(app.app.sandbox.received().is_empty(), "nothing sent");
}

async fn a_send_without_credits_answers_402_and_records_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    app.send_ok(&t.key, "+60123451234").await;
    let (s, c, _) = error_of(app.send_template(&t.key, "+60123451235").await).await;
    assert_eq!((s, c.as_str()), (402, "insufficient_credits"));
    assert_eq!(app.credits(&t.key).await, 0);
    let list: Value = app
        .http
        .get(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["messages"].as_array().map(Vec::len), Some(1));
    // A top-up by the operator makes sending possible again.
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{}/credits", t.tenant_id)))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"amount": 10, "reference": "INV-2026-001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["balance"], 10);
    app.send_ok(&t.key, "+60123451235").await;
}

async fn credentials_are_checked_and_roles_separated(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let get = |token: Option<&str>, path: &str| {
        let mut r = app.http.get(app.url(path));
        if let Some(tok) = token {
            r = r.bearer_auth(tok);
        }
        r.send()
    };
    let (s, c, _) = error_of(get(None, "/v1/account").await.unwrap()).await;
    assert_eq!((s, c.as_str()), (401, "unauthenticated"));
    let (s, c, _) = error_of(get(Some("kirim_wrong"), "/v1/account").await.unwrap()).await;
    assert_eq!((s, c.as_str()), (401, "unauthenticated"));
    // The operator manages tenants but cannot act as one.
    let (s, c, _) = error_of(get(Some(OPERATOR_TOKEN), "/v1/account").await.unwrap()).await;
    assert_eq!((s, c.as_str()), (403, "forbidden"));
    // A tenant key cannot use the platform API.
    let res = app
        .http
        .post(app.url("/v1/platform/tenants"))
        .bearer_auth(&t.key)
        .json(&json!({"name":"x","waba_id":"1","phone_number_id":"2","meta_access_token":"t"}))
        .send()
        .await
        .unwrap();
    let (s, c, _) = error_of(res).await;
    assert_eq!((s, c.as_str()), (403, "forbidden"));
    let account: Value = get(Some(&t.key), "/v1/account")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["id"], t.tenant_id.as_str());
    assert_eq!(account["status"], "active");
    assert!(account.get("meta_token_secret").is_none());
    assert!(!account.to_string().contains("EAAG-test-meta-token"));
}

async fn another_tenants_message_answers_404(b: Backend) {
    let app = spawn_app(b).await;
    let a = app.onboard(2).await;
    let other = app.onboard(2).await;
    let id = app.send_ok(&a.key, "+60123453333").await;
    let res = app
        .http
        .get(app.url(&format!("/v1/messages/{id}")))
        .bearer_auth(&other.key)
        .send()
        .await
        .unwrap();
    let (s, c, _) = error_of(res).await;
    assert_eq!((s, c.as_str()), (404, "not_found"));
    let res = app
        .http
        .get(app.url("/v1/messages/not-an-id"))
        .bearer_auth(&a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let list: Value = app
        .http
        .get(app.url("/v1/messages"))
        .bearer_auth(&other.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["messages"].as_array().map(Vec::len), Some(0));
}

/// Ids in a path that are no id Kirim or Meta makes (too long for a store key, or not of
/// the id's kind) name nothing: `404`, and nothing changes.
async fn path_ids_of_the_wrong_kind_or_length_answer_404_and_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(2).await;
    let keys_before: Value = app
        .http
        .get(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let long = "7".repeat(2_000);
    let word = "not-an-id".to_owned();
    for id in [&long, &word] {
        for (method, path, token) in [
            ("DELETE", format!("/v1/users/{id}"), t.key.as_str()),
            ("POST", format!("/v1/users/{id}/unlock"), t.key.as_str()),
            ("DELETE", format!("/v1/api-keys/{id}"), t.key.as_str()),
            ("POST", format!("/v1/api-keys/{id}/rotate"), t.key.as_str()),
            (
                "PUT",
                format!("/v1/phone-numbers/{id}/default"),
                t.key.as_str(),
            ),
            (
                "DELETE",
                format!("/v1/platform/tenants/{}/phone-numbers/{id}", t.tenant_id),
                OPERATOR_TOKEN,
            ),
            ("GET", format!("/v1/broadcasts/{id}"), t.key.as_str()),
        ] {
            let res = app
                .http
                .request(method.parse().unwrap(), app.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let (s, c, body) = error_of(res).await;
            assert_eq!(
                (s, c.as_str()),
                (404, "not_found"),
                "{method} {}: {body}",
                &path[..path.len().min(60)]
            );
        }
    }
    let keys_after: Value = app
        .http
        .get(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys_before, keys_after, "no key rotated or revoked");
}

async fn onboarding_the_same_phone_number_twice_is_a_conflict(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let res = app.http.post(app.url("/v1/platform/tenants")).bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"name":"Copy","waba_id":"1","phone_number_id":t.phone_number_id,"meta_access_token":"t"}))
        .send().await.unwrap();
    let (s, c, _) = error_of(res).await;
    assert_eq!((s, c.as_str()), (409, "conflict"));
    for bad in [
        json!({"name":"x","waba_id":"abc","phone_number_id":"1","meta_access_token":"t"}),
        json!({"name":"","waba_id":"1","phone_number_id":"1","meta_access_token":"t"}),
        json!({"name":"x","waba_id":"1","phone_number_id":"1","meta_access_token":"t","credits":-1}),
        // Past one top-up's most: a balance near i64's limit would overflow on DynamoDB.
        json!({"name":"x","waba_id":"1","phone_number_id":"1","meta_access_token":"t","credits":1_000_000_001_i64}),
        json!({"name":"x","waba_id":"1","phone_number_id":"1","meta_access_token":"t","credits":i64::MAX}),
        // A token a header cannot carry (a pasted file's line break, a space).
        json!({"name":"x","waba_id":"1","phone_number_id":"1","meta_access_token":"EAAG\n"}),
        json!({"name":"x","waba_id":"1","phone_number_id":"1","meta_access_token":"EAAG abc"}),
    ] {
        let res = app
            .http
            .post(app.url("/v1/platform/tenants"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{}/credits", t.tenant_id)))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"amount": 0, "reference": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .http
        .post(app.url(&format!(
            "/v1/platform/tenants/{}/credits",
            ulid::Ulid::new()
        )))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"amount": 5, "reference": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

fn sign(secret: &str, body: &[u8]) -> String {
    kirim_tests::sign_with(secret, body)
}

async fn forged_or_unsigned_webhooks_are_refused_and_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(2).await;
    let id = app.send_ok(&t.key, "+60123450007").await; // fails at once: a stable state
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["status"], "failed");
    let body = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":t.phone_number_id},
        "statuses":[{"id":"wamid.forged","status":"read","timestamp":"1700000000","recipient_id":"60123450007","biz_opaque_callback_data":id}]}}]}]})
        .to_string();
    for sig in [
        None,
        Some("sha256=00".to_owned()),
        Some(sign("wrong-secret", body.as_bytes())),
        Some(sign("test-app-secret", b"other body")),
    ] {
        let mut req = app
            .http
            .post(app.url("/webhooks/meta"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        let (s, _, _) = error_of(req.send().await.unwrap()).await;
        assert_eq!(s, 401);
    }
    assert_eq!(
        app.message(&t.key, &id).await["status"],
        "failed",
        "nothing changed"
    );
    // Correctly signed: a later read proves delivery and moves a failed message on.
    let res = app
        .http
        .post(app.url("/webhooks/meta"))
        .header(
            "x-hub-signature-256",
            sign("test-app-secret", body.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.message(&t.key, &id).await["status"], "read");
    // Unknown ids and shapes are acknowledged (Meta would otherwise retry for days).
    let odd = json!({"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":[{"id":"wamid.unknown","status":"delivered"},{"weird":true}]}}]}]}).to_string();
    let res = app
        .http
        .post(app.url("/webhooks/meta"))
        .header(
            "x-hub-signature-256",
            sign("test-app-secret", odd.as_bytes()),
        )
        .body(odd)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn the_subscription_handshake_echoes_the_challenge_only_for_the_right_token(b: Backend) {
    let app = spawn_app(b).await;
    let ok = app.http.get(app.url("/webhooks/meta?hub.mode=subscribe&hub.verify_token=test-verify-token&hub.challenge=12345"))
        .send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "12345");
    let bad = app
        .http
        .get(app.url("/webhooks/meta?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=12345"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);
    // Another mode with the right token says the mode is wrong, not the token.
    let res = app
        .http
        .get(app.url("/webhooks/meta?hub.mode=unsubscribe&hub.verify_token=test-verify-token&hub.challenge=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "hub.mode must be subscribe",
        "{body}"
    );
    // The right token without a challenge (or an empty one) is refused, and says which.
    for tail in ["", "&hub.challenge="] {
        let res = app
            .http
            .get(app.url(&format!(
                "/webhooks/meta?hub.mode=subscribe&hub.verify_token=test-verify-token{tail}"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{tail}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["error"]["message"], "hub.challenge is missing",
            "{tail}: {body}"
        );
    }
    // Other parameters are ignored.
    let extra = app
        .http
        .get(app.url("/webhooks/meta?hub.mode=subscribe&hub.verify_token=test-verify-token&hub.challenge=7&foo=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(extra.status(), 200);
    // The echoed challenge is never sniffed into a page.
    assert_eq!(
        extra
            .headers()
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    assert_eq!(extra.text().await.unwrap(), "7");
}

/// Wrong verify tokens are counted against their address as bad signatures are: past the
/// allowance (10) the address is answered `429` before any token is compared, so a weak
/// token an operator chose cannot be guessed at the request rate.
async fn guessing_the_verify_token_is_slowed_per_address(b: Backend) {
    let app = spawn_app(b).await;
    let guess = |token: &str| {
        app.http
            .get(app.url(&format!(
                "/webhooks/meta?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=9"
            )))
            .send()
    };
    // A handshake missing its token is a mistake, not a guess: not counted.
    for _ in 0..15 {
        let res = app
            .http
            .get(app.url("/webhooks/meta?hub.mode=subscribe&hub.challenge=9"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
    }
    for i in 0..10 {
        assert_eq!(
            guess(&format!("guess{i}")).await.unwrap().status(),
            403,
            "{i}"
        );
    }
    let refused = guess("guess10").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // Even the right one, from this address, until it has waited.
    let right = guess("test-verify-token").await.unwrap();
    assert_eq!(right.status(), 429);
}

/// An error that names what the client sent (an unknown field, an unknown query
/// parameter) repeats a bounded part of it, its invisible characters escaped: a 100 KB
/// name does not come back twice in the answer.
async fn an_error_repeats_a_bounded_and_escaped_part_of_an_unknown_name(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let long = format!("x\u{202e}{}", "n".repeat(100_000));
    let res = post_raw(
        &app,
        &t.key,
        format!(r#"{{"to":"+60123456789","text":{{"body":"x"}},"{long}":1}}"#),
    )
    .await;
    let (s, c, full) = error_of(res).await;
    assert_eq!((s, c.as_str()), (400, "invalid_request"));
    let message = full["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("unknown field `x\\u{202e}nnn"),
        "{message}"
    );
    assert!(message.contains('…'), "{message}");
    assert!(
        message.chars().count() < 1_000,
        "{} chars",
        message.chars().count()
    );
    let res = app
        .http
        .get(app.url(&format!("/v1/messages?{}=1", "q".repeat(5_000))))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    let (s, _, full) = error_of(res).await;
    assert_eq!(s, 400);
    let message = full["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("unknown query parameter `qqq"),
        "{message}"
    );
    assert!(message.chars().count() < 100, "{message}");
    assert_eq!(app.credits(&t.key).await, 5, "nothing debited");
}

/// Names and references a person types are shown to others (the console, the audit, a
/// callback's receiver): a control character or a direction override is refused, with
/// nothing written; a name in any script, with its joiners, is taken.
async fn names_with_hidden_or_control_characters_are_refused_and_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let post = |path: &'static str, body: Value| {
        app.http
            .post(app.url(path))
            .bearer_auth(&t.key)
            .json(&body)
            .send()
    };
    for name in [
        "billing\u{0}",
        "\u{202e}gnp.exe",
        "zero\u{200b}width",
        "a\nb",
    ] {
        let (s, c, full) = error_of(
            post("/v1/api-keys", json!({"name": name, "role": "operator"}))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s, c.as_str()),
            (400, "invalid_request"),
            "{name:?}: {full}"
        );
    }
    let (s, c, _) = error_of(
        post(
            "/v1/users",
            json!({"email": "ad\u{200d}min@example.com", "role": "operator", "password": "a long enough password"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (400, "invalid_request"));
    let keys: Value = app
        .http
        .get(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["api_keys"].as_array().map(Vec::len), Some(1), "{keys}");
    let users: Value = app
        .http
        .get(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["users"].as_array().map(Vec::len), Some(0), "{users}");
    // The operator's labels too: a tenant's name, a top-up's reference.
    let res = app
        .http
        .post(app.url("/v1/platform/tenants"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(
            &json!({"name": "Acme\u{2066}", "waba_id": "88001", "phone_number_id": "99001",
            "meta_access_token": "EAAG-token", "initial_credits": 1}),
        )
        .send()
        .await
        .unwrap();
    let (s, _, full) = error_of(res).await;
    assert_eq!(s, 400, "{full}");
    // A name in another script, with its zero-width non-joiner, is a name.
    let res = post(
        "/v1/api-keys",
        json!({"name": "کلید\u{200c}ها", "role": "operator"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
}

async fn every_response_has_a_request_id_and_unknown_routes_answer_the_error_shape(b: Backend) {
    let app = spawn_app(b).await;
    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert!(health.headers().contains_key("x-request-id"));
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status":"ok"})
    );
    let (s, c, _) = error_of(
        app.http
            .get(app.url("/v1/nothing-here"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (404, "not_found"));
    let (s, _, _) = error_of(app.http.delete(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(s, 405);
    let (s, c, _) = error_of(
        app.http
            .get(app.url("/v1/messages?limit=500"))
            .bearer_auth("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (401, "unauthenticated"));
    // The routes that keep their own answers too: the console's pages, the sandbox's.
    for path in ["/console/login", "/_sandbox/messages"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        assert!(res.headers().contains_key("x-request-id"), "{path}");
    }
}

/// An onboarding of a number another tenant has is refused `409` naming that tenant (an
/// operator route): an onboarding whose answer was lost is then found, to close or to give
/// a key, rather than refused blind on every retry.
async fn an_onboarding_of_a_taken_number_names_the_tenant_that_has_it(b: Backend) {
    let app = spawn_app(b).await;
    let first = app.onboard(1).await;
    let res = app
        .http
        .post(app.url("/v1/platform/tenants"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({
            "name": "Kedai Runcit Sdn Bhd",
            "waba_id": "1000001",
            "phone_number_id": first.phone_number_id,
            "meta_access_token": "EAAG-test-meta-token",
            "credits": 1,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&first.tenant_id),
        "{body}"
    );
}

/// Meta's app secret is reset at Meta first, then stored: a warm instance whose cached
/// copy (5 minutes) predates the store's new one reads it afresh for a signature the copy
/// refuses, instead of answering Meta 401 for minutes (STOPs late); forged signatures
/// cost the store at most one such read every 10 s.
#[tokio::test]
async fn a_secret_stored_after_the_cached_copy_verifies_at_once_and_forgeries_cost_one_read() {
    use std::sync::atomic::Ordering;
    let app = spawn_app(Backend::Memory).await;
    let mut deps = app.app.deps.clone();
    let counted = std::sync::Arc::new(kirim_tests::ScriptedSecrets::over(
        deps.secrets.store().clone(),
    ));
    deps.secrets = std::sync::Arc::new(kirim::service::SecretCache::new(
        counted.clone(),
        std::time::Duration::from_secs(300),
    ));
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let verify = |secret: &str| {
        let header = sign(secret, body);
        let deps = deps.clone();
        async move {
            kirim::service::webhook::verify_signature(&deps, body, Some(header.as_str()))
                .await
                .unwrap()
        }
    };
    assert!(verify("test-app-secret").await, "cached now");
    counted
        .inner
        .put_secret(
            &deps.settings.meta_app_secret,
            &kirim::secret::Secret::new("reset-at-meta"),
        )
        .await
        .unwrap();
    let reads = counted.read_count.load(Ordering::SeqCst);
    assert!(verify("reset-at-meta").await, "read afresh");
    assert_eq!(counted.read_count.load(Ordering::SeqCst), reads + 1);
    for _ in 0..5 {
        assert!(!verify("forged").await);
    }
    assert_eq!(
        counted.read_count.load(Ordering::SeqCst),
        reads + 1,
        "no more reads within 10 s"
    );
}

async fn during_an_app_secret_rotation_both_the_new_and_the_previous_secret_verify(b: Backend) {
    let app = spawn_app(b).await;
    let body = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",
        "value":{"statuses":[{"id":"wamid.rotation","status":"delivered","timestamp":"1700000000"}]}}]}]}).to_string();
    let post = |sig: String| {
        app.http
            .post(app.url("/webhooks/meta"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body.clone())
            .send()
    };
    // The operator stores a new app secret (Secrets Manager keeps the old as AWSPREVIOUS).
    let deps = &app.app.deps;
    deps.secrets
        .put(
            &deps.settings.meta_app_secret,
            &kirim::secret::Secret::new("rotated-app-secret"),
        )
        .await
        .unwrap();
    assert_eq!(
        post(sign("rotated-app-secret", body.as_bytes()))
            .await
            .unwrap()
            .status(),
        200,
        "the new secret"
    );
    assert_eq!(
        post(sign("test-app-secret", body.as_bytes()))
            .await
            .unwrap()
            .status(),
        200,
        "the previous secret, until it is retired"
    );
    assert_eq!(
        post(sign("some-other-secret", body.as_bytes()))
            .await
            .unwrap()
            .status(),
        401
    );
    // A second rotation retires the first secret.
    deps.secrets
        .put(
            &deps.settings.meta_app_secret,
            &kirim::secret::Secret::new("third-app-secret"),
        )
        .await
        .unwrap();
    assert_eq!(
        post(sign("test-app-secret", body.as_bytes()))
            .await
            .unwrap()
            .status(),
        401,
        "two versions back"
    );
    assert_eq!(
        post(sign("rotated-app-secret", body.as_bytes()))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Meta batches statuses, in bodies of up to 3 MB by its documentation: its webhook reads
/// bodies up to 3 MiB (twelve times an API body's limit), refuses larger ones with the
/// error shape, and a refused body changes nothing.
async fn a_meta_webhook_body_up_to_three_mib_is_read_and_a_larger_one_is_refused(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(2).await;
    let id = app.send_ok(&t.key, "+60123450007").await; // fails at once: a stable state
    assert_eq!(
        app.wait_status(&t.key, &id, "failed").await["status"],
        "failed"
    );
    let body_of = |padding: usize| {
        json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
            "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":t.phone_number_id},
            "padding": "p".repeat(padding),
            "statuses":[{"id":"wamid.big","status":"read","timestamp":"1700000000","recipient_id":"60123450007","biz_opaque_callback_data":id}]}}]}]})
        .to_string()
    };
    let post = |body: String| {
        let sig = sign("test-app-secret", body.as_bytes());
        app.http
            .post(app.url("/webhooks/meta"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
    };
    // 3.1 MiB: refused before anything is applied.
    let res = post(body_of(3174 * 1024)).await.unwrap();
    let (status, code, full) = error_of(res).await;
    assert_eq!(
        (status, code.as_str()),
        (413, "payload_too_large"),
        "{full}"
    );
    assert_eq!(app.message(&t.key, &id).await["status"], "failed");
    // 2.9 MB (over an API body's 256 KiB, and the 1 MiB once refused): read, verified and
    // applied as any other.
    let res = post(body_of(2_900_000)).await.unwrap();
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["received"], true, "{answer}");
    assert_eq!(answer["summary"]["applied"], 1, "{answer}");
    assert_eq!(app.message(&t.key, &id).await["status"], "read");
}

/// serde reads a struct from a JSON array (its elements as the fields in order), so no
/// field name would be checked: a body that is not an object is refused, and nothing is
/// made.
async fn a_body_that_is_a_json_array_is_refused_not_read_as_the_fields_in_order(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let cases: [(&str, &str, &str, String); 4] = [
        (
            "POST",
            "/v1/platform/tenants",
            OPERATOR_TOKEN,
            r#"["T","1000001","100000000000001","EAAG",50]"#.into(),
        ),
        ("POST", "/v1/api-keys", &t.key, r#"["k","admin"]"#.into()),
        (
            "POST",
            "/v1/messages",
            &t.key,
            r#"["+60123451234",{"name":"order_update","language":"en_US"}]"#.into(),
        ),
        ("POST", "/v1/users", &t.key, r#""a string""#.into()),
    ];
    for (method, path, token, body) in cases {
        let res = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, code, err) = error_of(res).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_request"),
            "{path} {body}: {err}"
        );
        assert_eq!(err["error"]["message"], "the body must be a JSON object");
    }
    assert_eq!(app.credits(&t.key).await, 5, "nothing sent");
    let keys: Value = app
        .http
        .get(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["api_keys"].as_array().map(Vec::len), Some(1), "{keys}");
}

/// A route that takes no body refuses one (a field it would ignore, as a `waba_id` to a
/// sync of every WABA) with `400`, and one past the limit with `413`, changing nothing; no
/// body, or `{}`, is what it takes.
async fn a_route_that_takes_no_body_refuses_one_and_takes_nothing_or_an_empty_object(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let key_of = |v: &Value| v["id"].as_str().unwrap_or_default().to_owned();
    let made: Value = app
        .http
        .post(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .json(&json!({"name": "spare", "role": "read_only"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spare = key_of(&made);
    let revoke = |body: Option<Vec<u8>>| {
        let mut req = app
            .http
            .delete(app.url(&format!("/v1/api-keys/{spare}")))
            .bearer_auth(&t.key);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        req.send()
    };
    for body in [
        br#"{"revoke":false}"#.to_vec(),
        b"[]".to_vec(),
        b"junk".to_vec(),
    ] {
        let (status, code, _) = error_of(revoke(Some(body)).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"));
    }
    let big = vec![b' '; 300 * 1024];
    assert_eq!(revoke(Some(big)).await.unwrap().status(), 413);
    let listed: Value = app
        .http
        .get(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["api_keys"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|k| k["status"] == "active"),
        "nothing revoked: {listed}"
    );
    assert_eq!(revoke(Some(b" {} ".to_vec())).await.unwrap().status(), 204);
    // A sync asked for one WABA is refused, not answered for all of them.
    let res = app
        .http
        .post(app.url("/v1/templates/sync"))
        .bearer_auth(&t.key)
        .json(&json!({"waba_id": "999"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .http
        .post(app.url("/v1/templates/sync"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Sends `head` (a request's head with its blank line) and one byte of body over a raw
/// connection, then reads what comes back within a minute (a deadline, not a speed
/// assertion: before the fix nothing came back until the declared body had).
async fn answer_to_a_declared_body(app: &TestApp, head: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(b"{").await.unwrap();
    let mut got = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(60), conn.read(&mut got))
        .await
        .expect("an answer before the declared body came")
        .unwrap();
    String::from_utf8_lossy(&got[..n]).into_owned()
}

/// A body whose declared `Content-Length` is past the route's limit is refused at once with
/// `413`, before it is read: a client declaring a gigabyte and trickling it held an
/// authenticated request open (local mode; API Gateway reads bodies whole). On the API and
/// on Meta's webhook (3 MiB).
async fn a_declared_length_past_the_limit_is_refused_before_the_body_comes(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let answer = answer_to_a_declared_body(
        &app,
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n",
            t.key
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    let answer = answer_to_a_declared_body(
        &app,
        "POST /webhooks/meta HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=00\r\n\
         Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Nothing was sent or debited.
    let account: Value = app
        .http
        .get(app.url("/v1/account"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["credits"], 5, "{account}");
}

/// Two `Authorization` headers name no credential: `401`, as API Gateway's comma-joined
/// value would be, not the first header's key (local mode took it).
async fn a_request_with_two_authorization_headers_is_refused(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let res = app
        .http
        .get(app.url("/v1/account"))
        .header("authorization", format!("Bearer {}", t.key))
        .header("authorization", "Bearer kirim_someone_else")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let one = app
        .http
        .get(app.url("/v1/account"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
}

/// A compressed body is refused `415` before it is read (its bytes are not JSON), on a
/// send and on an admin write, and nothing is sent, charged or made; `identity` is read.
/// The `415` says `Accept-Encoding: identity`, the one coding taken (RFC 9110 §15.5.16),
/// on a JSON route and on the CSV upload; no other answer carries it.
async fn a_compressed_body_is_refused_415_naming_identity_as_the_coding_taken_and_changes_nothing(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let send = br#"{"to":"+60123451234","template":{"name":"order_update","language":"en_US","category":"utility","components":[{"type":"body","parameters":[{"type":"text","text":"A-1"}]}]}}"#;
    let key = br#"{"name":"zipped","role":"operator"}"#;
    for (path, body, encoding) in [
        ("/v1/messages", &send[..], "gzip"),
        ("/v1/messages", &send[..], "identity, br"),
        ("/v1/api-keys", &key[..], "deflate"),
    ] {
        let res = app
            .http
            .post(app.url(path))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            accept_encoding(&res).as_deref(),
            Some("identity"),
            "{path} {encoding}"
        );
        let (status, code, err) = error_of(res).await;
        assert_eq!(
            (status, code.as_str()),
            (415, "invalid_request"),
            "{path} {encoding}: {err}"
        );
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("uncompressed"), "{err}");
    }
    // A route that reads its body its own way (an opt-out's optional scope, a CSV upload).
    for (method, path, content_type, body) in [
        (
            "PUT",
            "/v1/opt-outs/%2B60123451234",
            "application/json",
            &b"{}"[..],
        ),
        (
            "POST",
            "/v1/broadcasts?template_name=order_update&template_language=en_US",
            "text/csv",
            &b"phone\n+60123451234\n"[..],
        ),
    ] {
        let res = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&t.key)
            .header("content-type", content_type)
            .header("content-encoding", "gzip")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(accept_encoding(&res).as_deref(), Some("identity"), "{path}");
        let (status, code, err) = error_of(res).await;
        assert_eq!(
            (status, code.as_str()),
            (415, "invalid_request"),
            "{path}: {err}"
        );
        // Said of any body, not only JSON: the CSV upload's is a CSV.
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("send the body"), "{err}");
    }
    let optout = app
        .http
        .get(app.url("/v1/opt-outs/%2B60123451234"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(optout.status(), 404, "no opt-out made");
    assert_eq!(app.credits(&t.key).await, 5, "nothing sent");
    let keys: Value = app
        .http
        .get(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys["api_keys"].as_array().map(Vec::len),
        Some(1),
        "no key made: {keys}"
    );
    // Said as no encoding at all, it is taken.
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body(send.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(app.credits(&t.key).await, 4);
    // Another refusal of the body (malformed JSON, uncompressed) does not say it.
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .header("content-type", "application/json")
        .body(&send[1..])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(accept_encoding(&res), None);
}

/// A response's `Accept-Encoding`, if it has one.
fn accept_encoding(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A list's `since` after its `until` (to the millisecond): `400`, not an empty list that
/// would read as "none then", on the messages and both audit chains; equal, an empty window,
/// is an empty page.
async fn a_time_window_given_the_wrong_way_round_is_refused(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (early, late) = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
    let (at, a_moment_on) = ("2026-01-01T00:00:00.0004Z", "2026-01-01T00:00:00.0009Z");
    for (path, token) in [
        ("/v1/messages", t.key.as_str()),
        ("/v1/audit", t.key.as_str()),
        ("/v1/platform/audit", OPERATOR_TOKEN),
    ] {
        for (since, until) in [(late, early), ("2026-01-01T00:00:00.001Z", early)] {
            let res = app
                .http
                .get(app.url(path))
                .query(&[("since", since), ("until", until)])
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let (status, code, err) = error_of(res).await;
            assert_eq!(
                (status, code.as_str()),
                (400, "invalid_request"),
                "{path} {since} {until}: {err}"
            );
            assert!(
                err["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("since must not be after until")),
                "{err}"
            );
        }
        let res = app
            .http
            .get(app.url(path))
            .query(&[("since", early), ("until", late)])
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}: the right way round is read");
        // Equal, or apart by less than the millisecond the lists compare: a window of
        // nothing, an empty page.
        for (since, until) in [(early, early), (a_moment_on, at)] {
            let res = app
                .http
                .get(app.url(path))
                .query(&[("since", since), ("until", until)])
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{path} {since} {until}");
            let page: Value = res.json().await.unwrap_or(Value::Null);
            let items = page["messages"].as_array().or(page["events"].as_array());
            assert_eq!(items.map(Vec::len), Some(0), "{path}: {page}");
        }
    }
}

on_both_backends!(
    a_compressed_body_is_refused_415_naming_identity_as_the_coding_taken_and_changes_nothing,
    a_time_window_given_the_wrong_way_round_is_refused,
    a_declared_length_past_the_limit_is_refused_before_the_body_comes,
    a_request_with_two_authorization_headers_is_refused,
    a_body_that_is_a_json_array_is_refused_not_read_as_the_fields_in_order,
    a_route_that_takes_no_body_refuses_one_and_takes_nothing_or_an_empty_object,
    path_ids_of_the_wrong_kind_or_length_answer_404_and_change_nothing,
    during_an_app_secret_rotation_both_the_new_and_the_previous_secret_verify,
    an_onboarding_of_a_taken_number_names_the_tenant_that_has_it,
    bad_send_requests_answer_precise_errors_and_change_nothing,
    a_send_without_credits_answers_402_and_records_nothing,
    credentials_are_checked_and_roles_separated,
    another_tenants_message_answers_404,
    onboarding_the_same_phone_number_twice_is_a_conflict,
    forged_or_unsigned_webhooks_are_refused_and_change_nothing,
    the_subscription_handshake_echoes_the_challenge_only_for_the_right_token,
    every_response_has_a_request_id_and_unknown_routes_answer_the_error_shape,
    a_meta_webhook_body_up_to_three_mib_is_read_and_a_larger_one_is_refused,
    guessing_the_verify_token_is_slowed_per_address,
    an_error_repeats_a_bounded_and_escaped_part_of_an_unknown_name,
    names_with_hidden_or_control_characters_are_refused_and_change_nothing,
);

/// Local mode pointed at a real Meta (`KIRIM_META_BASE_URL`) serves none of the sandbox's
/// routes: they sign webhooks with the app secret for whoever calls them (a forged inbound
/// STOP, a template's status) and list every message sent. With the sandbox as Meta (the
/// default), they are there.
#[tokio::test]
async fn local_mode_serves_the_sandboxs_routes_only_while_the_sandbox_is_its_meta() {
    let mut cfg = kirim_tests::local_config(Backend::Memory).await;
    cfg.meta_base_url = Some("http://127.0.0.1:9".into());
    let app = kirim_tests::spawn_with(cfg).await;
    for (method, path) in [
        (reqwest::Method::POST, "/_sandbox/inbound"),
        (reqwest::Method::GET, "/_sandbox/messages"),
        (
            reqwest::Method::GET,
            "/_sandbox/graph/v23.0/1/message_templates",
        ),
    ] {
        let res = app
            .http
            .request(method.clone(), app.url(path))
            .body(r#"{"phone_number_id":"1","from":"60123456789","text":"STOP"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{method} {path}");
    }
    let app = spawn_app(Backend::Memory).await;
    let res = app
        .http
        .get(app.url("/_sandbox/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// A rotated Meta app secret's previous value signs for 15 minutes at most, whatever the
/// rotation grace (a day, for the operator token): the usual reason to rotate it is a leak,
/// and a leaked secret taken for a day would let anyone forge webhooks that long.
#[tokio::test]
async fn a_previous_app_secret_signs_for_fifteen_minutes_at_most() {
    use kirim::secret::Secret;
    let clock = kirim_tests::ManualClock::new();
    let mut settings = kirim_tests::test_settings();
    settings.rotation_grace = std::time::Duration::from_secs(24 * 3600);
    let deps = kirim::wiring::memory_deps(settings, clock.clone()).unwrap();
    let name = deps.settings.meta_app_secret.clone();
    deps.secrets
        .put(&name, &Secret::new("leaked-app-secret"))
        .await
        .unwrap();
    deps.secrets
        .put(&name, &Secret::new("new-app-secret"))
        .await
        .unwrap();
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let signed_by = |secret: &str| {
        let deps = &deps;
        let sig = sign(secret, body);
        async move {
            kirim::service::webhook::verify_signature(deps, body, Some(sig.as_str()))
                .await
                .unwrap()
        }
    };
    assert!(signed_by("new-app-secret").await);
    clock.advance(chrono::Duration::minutes(14));
    assert!(signed_by("leaked-app-secret").await, "within 15 minutes");
    clock.advance(chrono::Duration::minutes(2));
    assert!(!signed_by("leaked-app-secret").await, "after 15 minutes");
    assert!(signed_by("new-app-secret").await);
}
