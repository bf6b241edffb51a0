//! Secrets and content never reach a log line, an error body or a list response.

use kirim::config::Backend;
use kirim_tests::{captured_logs, spawn_app, OPERATOR_TOKEN};
use serde_json::{json, Value};

async fn secrets_content_and_full_numbers_never_reach_logs_or_responses(b: Backend) {
    let app = spawn_app(b).await;
    let marker = format!("CONTENT-{}", ulid::Ulid::new());
    let meta_token = format!("EAAG-SECRET-{}", ulid::Ulid::new());
    let pnid = format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
    let onboarded: Value = app.http.post(app.url("/v1/platform/tenants")).bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"name": "Privacy Sdn Bhd", "waba_id": "1", "phone_number_id": pnid, "meta_access_token": meta_token, "credits": 5}))
        .send().await.unwrap().json().await.unwrap();
    let admin = onboarded["admin_api_key"].as_str().unwrap().to_owned();
    assert!(
        !onboarded.to_string().contains(&meta_token),
        "the Meta token is never returned"
    );
    let created: Value = app
        .http
        .post(app.url("/v1/api-keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "ops", "role": "operator"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let to = "+60199990123";
    app.user_wrote(&pnid, to).await;
    // The user's own words, through Meta's signed inbound webhook: never kept or logged.
    let inbound = format!("INBOUND-{}", ulid::Ulid::new());
    app.sandbox_inbound(json!({"phone_number_id": pnid, "from": to, "text": inbound}))
        .await;
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&key)
        .json(&json!({"to": to, "text": {"body": marker}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = app.wait_status(&key, &id, "read").await;
    // The sandbox's wamids are shaped as Meta's, which carry the recipient's number.
    let wamid = sent["wamid"].as_str().unwrap_or_default().to_owned();
    let raw = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(wamid.trim_start_matches("wamid."))
            .unwrap_or_default()
    };
    assert!(
        String::from_utf8_lossy(&raw).contains("60199990123"),
        "a Meta-shaped wamid: {wamid}"
    );
    // Bad requests that carry secrets and content in odd places.
    let bodies = [
        json!({"to": to, "text": {"body": [marker]}}),
        json!({"to": meta_token, "text": {"body": marker}}),
        json!({"to": to, "text": {"body": marker}, "secret": meta_token}),
    ];
    let mut answers = String::new();
    for body in bodies {
        let res = app
            .http
            .post(app.url("/v1/messages"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        answers.push_str(&res.text().await.unwrap());
    }
    let res = app
        .http
        .get(app.url("/v1/account"))
        .bearer_auth(format!("{key}x"))
        .send()
        .await
        .unwrap();
    answers.push_str(&res.text().await.unwrap());
    for path in [
        "/v1/api-keys",
        "/v1/audit",
        "/v1/account",
        &format!("/v1/messages/{id}"),
    ] {
        answers.push_str(
            &app.http
                .get(app.url(path))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    // A console user: its password, session token and TOTP secret.
    let password = format!("pw-{}", ulid::Ulid::new());
    let email = format!(
        "{}@privacy.example",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let res = app
        .http
        .post(app.url("/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"email": email, "role": "admin", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    answers.push_str(&res.text().await.unwrap());
    let session: Value = app
        .http
        .post(app.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["token"].as_str().unwrap().to_owned();
    let enrolled: Value = app
        .http
        .post(app.url("/v1/auth/2fa/enroll"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let totp_secret = enrolled["secret"].as_str().unwrap().to_owned();
    let res = app
        .http
        .post(app.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": format!("{password}x")}))
        .send()
        .await
        .unwrap();
    answers.push_str(&res.text().await.unwrap());
    answers.push_str(
        &app.http
            .get(app.url("/v1/users"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let logs = captured_logs();
    for secret in [password.as_str(), &token, &totp_secret] {
        assert!(!logs.contains(secret), "a console secret in the logs");
    }
    assert!(
        !answers.contains(&password) && !answers.contains(&totp_secret),
        "no password or TOTP secret in answers"
    );
    assert!(
        logs.contains(&id),
        "the capture works: the message id is logged"
    );
    for secret in [
        &meta_token,
        &admin,
        &key,
        &marker,
        &inbound,
        OPERATOR_TOKEN,
        "test-app-secret",
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!answers.contains(secret), "{secret} in a response");
    }
    assert!(
        !logs.contains(to) && !logs.contains("60199990123"),
        "full phone numbers are masked in logs"
    );
    assert!(logs.contains("+60****0123"));
    // Nor inside a wamid: its start (the number's part) never reaches a line, its end does.
    let head = &wamid["wamid.".len()..][..20];
    assert!(!logs.contains(head), "a wamid's number part in the logs");
    assert!(
        logs.contains(kirim::domain::wamid_tail(&wamid)),
        "the capture works: the wamid's tail is logged"
    );
}

mod memory_backend {
    #[tokio::test]
    async fn secrets_content_and_full_numbers_never_reach_logs_or_responses() {
        super::secrets_content_and_full_numbers_never_reach_logs_or_responses(
            kirim::config::Backend::Memory,
        )
        .await
    }
}

mod aws_backend_on_moto {
    #[tokio::test]
    async fn secrets_content_and_full_numbers_never_reach_logs_or_responses() {
        super::secrets_content_and_full_numbers_never_reach_logs_or_responses(
            kirim::config::Backend::Aws,
        )
        .await
    }
}
