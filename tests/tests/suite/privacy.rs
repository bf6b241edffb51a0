//! Secrets and content never reach a log line, an error body or a list response.

use kirim::config::Backend;
use kirim_tests::{captured_logs, spawn_app, OPERATOR_TOKEN};
use serde_json::{json, Value};

use super::access::call;

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

/// Meta's Graph API as far as sends go, quoting what it was sent as Meta's "Parameter value
/// is not valid" does: a send to a number ending in 0101 is refused (131009) with the
/// template's first text parameter and the recipient's number in its words (both
/// `message` and `error_user_title`); any other is accepted with a wamid. Any other route
/// answers Meta's error 100 (no template or number reads here). Answers its base URL.
async fn quoting_meta() -> String {
    use axum::http::StatusCode;
    async fn send(axum::Json(body): axum::Json<Value>) -> (StatusCode, axum::Json<Value>) {
        let to = body["to"].as_str().unwrap_or_default().to_owned();
        let param = body["template"]["components"][0]["parameters"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if to.ends_with("0101") {
            let answer = json!({"error": {"code": 131009, "type": "OAuthException",
                "message": format!("(#131009) Parameter value is not valid: {param} for {to}"),
                "error_user_title": format!("Parameter value is not valid: {param} for +{to}"),
                "fbtrace_id": "AQUOTE"}});
            return (StatusCode::BAD_REQUEST, axum::Json(answer));
        }
        let wamid = format!("wamid.QUOTE{}", ulid::Ulid::new());
        let answer = json!({"messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid}]});
        (StatusCode::OK, axum::Json(answer))
    }
    let app = axum::Router::new()
        .route("/{version}/{number}/messages", axum::routing::post(send))
        .fallback(|| async {
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"code": 100, "message": "Unsupported request"}})),
            )
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Local mode with [`quoting_meta`] as Meta, a tenant whose catalogue has `order_update`
/// (one body parameter), and a status callback receiver set.
async fn app_with_quoting_meta(
    b: Backend,
) -> (
    kirim_tests::TestApp,
    kirim_tests::Onboarded,
    super::callbacks::Receiver,
) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.meta_base_url = Some(quoting_meta().await);
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(10).await;
    let template = kirim::ports::CatalogueTemplate {
        body_parameters: 1,
        ..kirim_tests::approved_template("1000001", "order_update", "en_US", chrono::Utc::now())
    };
    app.app
        .deps
        .templates
        .put_template(&template)
        .await
        .unwrap();
    let (url, receiver) = super::callbacks::receiver(0).await;
    let (st, _) = super::callbacks::set_callback(
        &app,
        &t.key,
        json!({"url": url, "secret": super::callbacks::CALLBACK_SECRET}),
    )
    .await;
    assert_eq!(st, 200);
    (app, t, receiver)
}

fn template_with(param: &str) -> Value {
    json!({"name": "order_update", "language": "en_US",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": param}]}]})
}

/// Each title in `text` (a stored item as JSON, whatever attribute holds it: a message's
/// error, a campaign's failure tally) that begins with Meta's `words`: up to its closing
/// quote.
fn after_each<'a>(text: &'a str, words: &str) -> Vec<&'a str> {
    text.match_indices(words)
        .map(|(i, _)| {
            let rest = &text[i..];
            rest.find('"').map_or(rest, |j| &rest[..j])
        })
        .collect()
}

/// Whether `text` holds the number's last seven digits, in any form (spaced, dashed).
fn holds_a_number(text: &str, digits: &str) -> bool {
    let squeezed: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
    squeezed.contains(&digits[digits.len() - 7..])
}

/// Meta's 400 that quotes the template's parameter and the recipient's number: the
/// failure's title keeps Meta's words without either, in the table, `GET /v1/messages/{id}`,
/// the export, a campaign's `recipients.csv` and failure tally, and the status callback.
async fn metas_refusal_quoting_a_parameter_and_the_number_keeps_neither(b: Backend) {
    let (app, t, receiver) = app_with_quoting_meta(b).await;
    let marker = format!("MARK-secret-param-{}", ulid::Ulid::new());
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .json(&json!({"to": "+60123450101", "template": template_with(&marker)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["code"], 131009, "{view}");
    let title = view["error"]["title"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        title, "Parameter value is not valid: <redacted> for <redacted>",
        "Meta's words, without the parameter or the number: {view}"
    );
    // A campaign of two such recipients: one failure line (the titles no longer differ per
    // recipient), and `recipients.csv`'s titles hold neither.
    let res = app
        .http
        .post(app.url("/v1/broadcasts"))
        .bearer_auth(&t.key)
        .json(&json!({"template": template_with(&marker),
            "recipients": ["+60123460101", "+60123470101"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let campaign = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tally = Value::Null;
    for _ in 0..300 {
        tally = app
            .http
            .get(app.url(&format!("/v1/broadcasts/{campaign}")))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if tally["status"] == "completed" && tally["counts"]["failed"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(tally["counts"]["failed"], 2, "{tally}");
    assert_eq!(
        tally["failures"],
        json!([{"code": 131009, "title": title, "hint": tally["failures"][0]["hint"], "count": 2}]),
        "{tally}"
    );
    let csv = app
        .http
        .get(app.url(&format!("/v1/broadcasts/{campaign}/recipients.csv")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let titles: Vec<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|r| r.split(',').nth(3))
        .collect();
    assert_eq!(titles, [title.as_str(), title.as_str()], "{csv}");
    assert!(!csv.contains(&marker), "{csv}");
    // The export's messages.
    let export = app
        .http
        .get(app.url("/v1/account/export"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!export.contains(&marker), "the parameter in the export");
    let errors: Vec<Value> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["type"] == "message")
        .map(|l| l["error"].clone())
        .collect();
    assert_eq!(errors.len(), 3, "{export}");
    for e in &errors {
        assert_eq!(e["title"], title.as_str(), "{export}");
    }
    // The table: the parameter nowhere; the titles kept without the numbers.
    let mut titles_seen = 0;
    for row in super::retention::all_items(&app, b).await {
        let text = row.attrs.to_string();
        assert!(!text.contains(&marker), "{} / {}: {text}", row.pk, row.sk);
        for kept in after_each(&text, "Parameter value is not valid") {
            titles_seen += 1;
            for digits in ["60123450101", "60123460101", "60123470101"] {
                assert!(
                    !holds_a_number(kept, digits),
                    "{} / {}: {kept}",
                    row.pk,
                    row.sk
                );
            }
        }
    }
    assert!(titles_seen >= 3, "the three messages' titles are stored");
    // The status callbacks: no number, no parameter, Meta's words. Three, each its own
    // job: the first to arrive says nothing of the other two.
    let got = receiver.wait_for_count("failed", 3).await;
    let failed: Vec<&str> = got
        .iter()
        .filter(|g| super::callbacks::status_of(g) == "failed")
        .map(|g| g.body.as_str())
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    for body in failed {
        assert!(!body.contains(&marker), "{body}");
        assert!(!body.contains("60123"), "{body}");
        assert!(body.contains("Parameter value is not valid"), "{body}");
    }
    let logs = captured_logs();
    assert!(!logs.contains(&marker), "the parameter in a log line");
}

/// A `failed` status whose error quotes the recipient (its number, its user id): the title
/// stored and sent keeps Meta's words without them.
async fn a_failed_statuss_title_quoting_the_recipient_is_stored_without_it(b: Backend) {
    let (app, t, receiver) = app_with_quoting_meta(b).await;
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .json(&json!({"to": "+60123450202", "template": template_with("P-1")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = app.wait_status(&t.key, &id, "sent").await;
    let wamid = sent["wamid"].as_str().unwrap_or_default().to_owned();
    assert!(wamid.starts_with("wamid.QUOTE"), "{sent}");
    let now = chrono::Utc::now().timestamp().to_string();
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "60300000000", "phone_number_id": t.phone_number_id},
            "statuses": [{"id": wamid, "status": "failed", "timestamp": now,
                "recipient_id": "60123450202", "recipient_user_id": "MY.1349120865530274",
                "errors": [{"code": 131026,
                    "title": "Message undeliverable to 60123450202 (MY.1349120865530274)",
                    "message": "Message undeliverable to 60123450202",
                    "error_data": {"details": "Recipient +60 12-345 0202 is not on WhatsApp"}}]}]}}]}]});
    let res = app.post_webhook(&body).await;
    assert_eq!(res.status(), 200);
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["code"], 131026, "{view}");
    assert_eq!(
        view["error"]["title"], "Message undeliverable to <redacted> (<redacted>)",
        "{view}"
    );
    let mut titles_seen = 0;
    for row in super::retention::all_items(&app, b).await {
        let text = row.attrs.to_string();
        for kept in after_each(&text, "Message undeliverable") {
            titles_seen += 1;
            assert!(
                !holds_a_number(kept, "60123450202") && !kept.contains("1349120865530274"),
                "{} / {}: {kept}",
                row.pk,
                row.sk
            );
        }
    }
    assert!(titles_seen >= 1, "the message's title is stored");
    let got = receiver.wait_for(&["failed"]).await;
    let failed = got
        .iter()
        .find(|g| super::callbacks::status_of(g) == "failed")
        .map(|g| g.body.clone())
        .unwrap_or_default();
    assert!(failed.contains("Message undeliverable"), "{failed}");
    assert!(
        !failed.contains("60123") && !failed.contains("1349120865530274"),
        "{failed}"
    );
}

/// Meta's words as a build before stop 60 kept them for a message to `to`: its number with
/// and without `+`, a 9-digit run, Meta's code.
fn unscrubbed_title(to: &str) -> String {
    format!(
        "(#131009) Parameter value is not valid: {to} for {}, order 123456789",
        to.trim_start_matches('+')
    )
}

/// What every reader shows of [`unscrubbed_title`]: Meta's words and code, no number.
const READ_BACK: &str =
    "(#131009) Parameter value is not valid: <redacted> for <redacted>, order <redacted>";

/// A title that holds none of the number's digits (its last seven, in any form) nor any
/// run of 7 digits, and Meta's code whole.
fn read_back_without_numbers(text: &str, digits: &str, what: &str) {
    assert!(!holds_a_number(text, digits), "{what}: {text}");
    let longest = text
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest < 7, "{what}: {text}");
    assert!(text.contains("(#131009)"), "{what}: {text}");
}

/// A failure whose title an older build stored unscrubbed (written here through the store
/// port, past the dispatcher's and the webhook's scrubbing): every reader scrubs it as it
/// reads it — `GET /v1/messages/{id}` and the list, the export, a campaign's
/// `recipients.csv` and failure tally, and a status callback owed since then.
async fn a_title_stored_before_titles_were_scrubbed_is_read_back_without_the_number(b: Backend) {
    let (app, t, receiver) = app_with_quoting_meta(b).await;
    let deps = &app.app.deps;
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    // As a build before stop 60 wrote Meta's `failed` status for a sent message.
    let fail_as_before = |id: String, to: &'static str| {
        let tenant = tenant.clone();
        async move {
            let id = kirim::domain::MessageId::parse(&id).unwrap();
            let change = kirim::ports::StatusChange {
                error: Some(kirim::domain::MessageError {
                    code: 131009.into(),
                    title: unscrubbed_title(to),
                }),
                ..Default::default()
            };
            let moved = deps
                .messages
                .transition(
                    &tenant,
                    &id,
                    kirim::domain::MessageStatus::Failed,
                    &change,
                    chrono::Utc::now(),
                )
                .await
                .unwrap();
            assert!(
                matches!(moved, kirim::ports::Transition::Applied(_)),
                "{moved:?}"
            );
        }
    };
    let single = "+60123450303";
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .json(&json!({"to": single, "template": template_with("P-1")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_status(&t.key, &id, "sent").await;
    fail_as_before(id.clone(), single).await;
    // A campaign's recipient, failed the same way once its message was sent.
    let recipient = "+60123450404";
    let res = app
        .http
        .post(app.url("/v1/broadcasts"))
        .bearer_auth(&t.key)
        .json(&json!({"template": template_with("P-2"), "recipients": [recipient]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let campaign = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get_campaign = || async {
        app.http
            .get(app.url(&format!("/v1/broadcasts/{campaign}")))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let mut view = Value::Null;
    for _ in 0..300 {
        view = get_campaign().await;
        if view["counts"]["sent"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(view["counts"]["sent"], 1, "{view}");
    let recipients_csv = || async {
        app.http
            .get(app.url(&format!("/v1/broadcasts/{campaign}/recipients.csv")))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let csv = recipients_csv().await;
    let row = csv.lines().nth(1).unwrap_or_default().to_owned();
    let campaign_message = row.split(',').nth(4).unwrap_or_default().to_owned();
    fail_as_before(campaign_message.clone(), recipient).await;

    // GET /v1/messages/{id}, and the list.
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["title"], READ_BACK, "{view}");
    let list: Value = app
        .http
        .get(app.url("/v1/messages?status=failed"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let titles: Vec<&Value> = list["messages"]
        .as_array()
        .map(|a| a.iter().map(|m| &m["error"]["title"]).collect())
        .unwrap_or_default();
    assert_eq!(titles.len(), 2, "{list}");
    for title in titles {
        assert_eq!(title, READ_BACK, "{list}");
    }
    // The campaign's failure tally and its recipients.csv.
    let view = get_campaign().await;
    assert_eq!(view["failures"][0]["title"], READ_BACK, "{view}");
    let csv = recipients_csv().await;
    // (Quoted: the title holds a comma.)
    assert_eq!(
        csv.lines().nth(1).and_then(|r| r.split('"').nth(1)),
        Some(READ_BACK),
        "{csv}"
    );
    // The export's messages.
    let export = app
        .http
        .get(app.url("/v1/account/export"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: Vec<Value> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["type"] == "message")
        .map(|l| l["error"]["title"].clone())
        .collect();
    assert_eq!(errors, [READ_BACK, READ_BACK], "{export}");
    // A callback the queue refused back then, owed since with Meta's words in its body.
    let job = kirim::service::jobs::CallbackJob {
        tenant_id: tenant.clone(),
        message_id: kirim::domain::MessageId::parse(&id).unwrap(),
        status: kirim::domain::MessageStatus::Failed,
        at: chrono::Utc::now(),
        sequence: 2,
        error: Some(kirim::domain::MessageError {
            code: 131009.into(),
            title: unscrubbed_title(single),
        }),
        client_reference: None,
    };
    let body = kirim::service::jobs::QueueJob::StatusCallback(job)
        .to_body()
        .unwrap();
    assert!(body.contains("60123450303"), "owed as it was: {body}");
    deps.status_callbacks
        .owe_callback(&kirim::ports::OwedCallback {
            tenant_id: tenant.clone(),
            message_id: kirim::domain::MessageId::parse(&id).unwrap(),
            sequence: 2,
            body,
            owed_at: chrono::Utc::now(),
            expires_at: None,
            leased_until: None,
        })
        .await
        .unwrap();
    kirim::service::callbacks::requeue_owed(deps).await.unwrap();
    let got = receiver.wait_for(&["failed"]).await;
    let failed: Vec<&str> = got
        .iter()
        .filter(|g| super::callbacks::status_of(g) == "failed")
        .map(|g| g.body.as_str())
        .collect();
    assert_eq!(failed.len(), 1, "{got:?}");
    let sent: Value = serde_json::from_str(failed[0]).unwrap();
    assert_eq!(sent["error"]["title"], READ_BACK, "{sent}");
    let csv_title = csv.lines().nth(1).and_then(|r| r.split('"').nth(1));
    for (title, what) in [
        (sent["error"]["title"].as_str(), "callback"),
        (csv_title, "recipients.csv"),
        (errors[0].as_str(), "export"),
        (errors[1].as_str(), "export"),
    ] {
        for digits in ["60123450303", "60123450404"] {
            read_back_without_numbers(title.unwrap_or_default(), digits, what);
        }
    }
    // (The CSV and the export show the recipient in its own column; a callback never.)
    assert!(!failed[0].contains("60123450"), "{}", failed[0]);
}

/// A number's hold and a tenant's suspension on Meta's word, as a build before stop 60 kept
/// them (written here through the store ports, past the scrubbing of Meta's titles): Meta's
/// words as they came, quoting the number the message went to and a long number. Read
/// back, the number goes and Meta's words and codes stay: the hold through
/// `GET /v1/phone-numbers` (which the console's pages show), the suspension's reason as every
/// reader of the tenant decodes it (no route shows a suspension's reason: the operator's
/// next suspend, resume or close replaces it, and its answer shows theirs). An operator's
/// own reason is kept as typed, long numbers and dates included.
async fn a_hold_or_suspension_reason_kept_before_titles_were_scrubbed_is_read_back_without_the_number(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let tenant_id = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let tenant = deps.tenants.get_tenant(&tenant_id).await.unwrap().unwrap();
    // The default number's item, as its first change would write it.
    deps.numbers
        .put_phone_number_if_absent(&kirim::ports::PhoneNumberRecord::default_of(&tenant))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let held = deps
        .numbers
        .hold_phone_number(
            &tenant_id,
            &t.phone_number_id,
            &kirim::ports::NumberHold {
                code: 131048,
                reason:
                    "(#131048) Spam rate limit hit for +60123450303 (60123450303), order 123456789"
                        .into(),
                since: now,
                by: "webhook".into(),
            },
            now,
        )
        .await
        .unwrap();
    assert!(held);
    let (s, numbers) = call(&app, "GET", "/v1/phone-numbers", Some(&t.key), None).await;
    assert_eq!(s, 200, "{numbers}");
    assert_eq!(
        numbers["phone_numbers"][0]["hold"]["reason"],
        "(#131048) Spam rate limit hit for <redacted> (<redacted>), order <redacted>",
        "{numbers}"
    );
    assert!(!numbers.to_string().contains("0123450"), "{numbers}");

    let suspended = deps
        .tenants
        .suspend_if_unchanged(
            &tenant_id,
            "meta error 131031: (#131031) Business account locked for +60123450303, ref 123456789",
            now,
            tenant.status_changed_at,
        )
        .await
        .unwrap()
        .expect("suspended");
    let read_back =
        "meta error 131031: (#131031) Business account locked for <redacted>, ref <redacted>";
    assert_eq!(suspended.status_reason.as_deref(), Some(read_back));
    let again = deps.tenants.get_tenant(&tenant_id).await.unwrap().unwrap();
    assert_eq!(again.status_reason.as_deref(), Some(read_back));
    // The operator's words are theirs: a date and an invoice number stay.
    let reason = "paid 2025-01-15, invoice 20250115 0042, call +60 12-345 0303";
    let (s, resumed) = call(
        &app,
        "POST",
        &format!("/v1/platform/tenants/{}/resume", t.tenant_id),
        Some(OPERATOR_TOKEN),
        Some(json!({"reason": reason})),
    )
    .await;
    assert_eq!(s, 200, "{resumed}");
    assert_eq!(resumed["status_reason"], reason, "{resumed}");
    let again = deps.tenants.get_tenant(&tenant_id).await.unwrap().unwrap();
    assert_eq!(again.status_reason.as_deref(), Some(reason));
}

on_both_backends!(
    secrets_content_and_full_numbers_never_reach_logs_or_responses,
    metas_refusal_quoting_a_parameter_and_the_number_keeps_neither,
    a_failed_statuss_title_quoting_the_recipient_is_stored_without_it,
    a_title_stored_before_titles_were_scrubbed_is_read_back_without_the_number,
    a_hold_or_suspension_reason_kept_before_titles_were_scrubbed_is_read_back_without_the_number,
);
