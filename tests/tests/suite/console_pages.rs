//! The console's templates, campaigns, message-failure, users and usage pages over HTTP
//! (local mode, both backends): what each role is offered, that the forms go through the
//! API (and its CSRF check), and the pages that wait for API routes still to come.

use std::time::Duration;

use kirim::config::Backend;
use kirim::console::{campaigns, usage};
use kirim::domain::Role;
use kirim_tests::{spawn_app, TestApp};
use serde_json::{json, Value};

use super::access::call;
use super::console::{sign_in, Browser, Page};
use super::users::{new_user, PASSWORD};

/// The id in a `/console/campaigns/{id}?...` redirect, or on the results page shown at once
/// (when some entries were invalid).
pub(super) fn campaign_of(p: &Page) -> String {
    let marker = r#"<dd id="campaign-id">"#;
    if p.status == 200 {
        if let Some(at) = p.html.find(marker) {
            let rest = &p.html[at + marker.len()..];
            return rest.split('<').next().unwrap_or_default().to_owned();
        }
    }
    assert_eq!(p.status, 303, "{}", p.html);
    let loc = p.location();
    let rest = loc
        .strip_prefix("/console/campaigns/")
        .unwrap_or_else(|| panic!("a campaign page: {loc}"));
    rest.split('?').next().unwrap_or_default().to_owned()
}

/// The broadcast once `done` says it is (or the last view after a deadline; the check
/// that follows decides).
pub(super) async fn broadcast_when(
    app: &TestApp,
    key: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    // Up to a minute: a deadline, not a speed assertion (a campaign goes through the queue
    // pollers, on a CI machine whose every test shares one moto).
    for _ in 0..600 {
        let (_, b) = call(app, "GET", &format!("/v1/broadcasts/{id}"), Some(key), None).await;
        last = b;
        if done(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

async fn the_templates_page_lists_the_catalogue_and_only_an_admin_may_sync_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let (reader, _) = new_user(&app, &t.key, "read_only").await;

    let mut web = sign_in(&app, &admin).await;
    let list = web.get("/console/templates").await;
    assert_eq!(list.status, 200, "{}", list.html);
    for name in [
        "order_update",
        "promo_sale",
        "login_code",
        "paused_promo",
        "pending_notice",
    ] {
        assert!(list.html.contains(name), "{name} listed");
    }
    assert!(list.html.contains("Sync with Meta"));
    let approved = web
        .get("/console/templates?status=approved&category=utility")
        .await;
    assert!(approved.html.contains("order_update"));
    assert!(!approved.html.contains("pending_notice") && !approved.html.contains("promo_sale"));
    let bad = web.get("/console/templates?status=lost").await;
    assert_eq!(bad.status, 400);
    assert!(bad.html.contains("Not done:"), "{}", bad.html);
    let csrf = list.csrf();
    let synced = web
        .post("/console/templates/sync", &[("csrf", &csrf)])
        .await;
    assert_eq!(synced.status, 200, "{}", synced.html);
    assert!(
        synced.html.contains("Synced with Meta: 5 templates read"),
        "{}",
        synced.html
    );
    assert_eq!(
        web.post("/console/templates/sync", &[]).await.status,
        403,
        "no CSRF token"
    );

    let mut ro = sign_in(&app, &reader).await;
    let page = ro.get("/console/templates").await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("order_update"));
    assert!(
        !page.html.contains("Sync with Meta"),
        "a read-only user is not offered sync"
    );
    let forged = ro
        .post("/console/templates/sync", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(forged.status, 403, "the API's role check refuses it");
}

async fn an_operator_creates_a_campaign_from_pasted_numbers_and_sees_its_results_and_failures(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let form = web.get("/console/campaigns").await;
    assert_eq!(form.status, 200, "{}", form.html);
    assert!(
        form.html.contains("order_update:en_US"),
        "approved templates offered"
    );
    assert!(!form.html.contains("pending_notice"), "only approved ones");
    assert!(form.html.contains(r#"enctype="multipart/form-data""#));
    let csrf = form.csrf();
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-7"),
                ("numbers", "+60123450011\n+60123450001, not-a-number"),
            ],
        )
        .await;
    let id = campaign_of(&made);
    let settled = broadcast_when(&app, &t.key, &id, |b| {
        b["counts"]["failed"] == 1 && b["counts"]["read"] == 1
    })
    .await;
    assert_eq!(settled["accepted"], 2, "{settled}");
    let page = web
        .get(&format!("/console/campaigns/{id}?done=campaign_created"))
        .await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(page.html.contains("The campaign was accepted"));
    assert!(
        page.html.contains(r#"id="campaign-accepted">2<"#),
        "{}",
        page.html
    );
    assert!(page.html.contains("<svg"), "a chart");
    // Every id once (a bar's `url(#…)` fill finds its pattern, not a count of that name).
    let mut ids: Vec<&str> = page
        .html
        .split(" id=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all, "duplicate ids: {}", page.html);
    assert!(
        page.html.contains("read 1") && page.html.contains("failed 1"),
        "the chart's text says the numbers"
    );
    assert!(page.html.contains("131026"), "the failure's code");
    assert!(
        page.html.contains("could not be delivered"),
        "and its hint: {}",
        page.html
    );
    assert!(!page.html.contains("ORDER-7"), "never the content");
    // Moves and the export are offered exactly when the API has them; a retry only when a
    // later try may fix a failure (131026, undeliverable, is not one).
    assert!(
        !page.html.contains("Retry failed messages"),
        "{}",
        page.html
    );
    assert_eq!(
        page.html.contains("recipients.csv"),
        campaigns::export_available(Role::Operator)
    );
    assert_eq!(
        form.html.contains("campaign-list-unavailable"),
        !campaigns::list_available(Role::Operator)
    );
    if !campaigns::action_available(Role::Operator, "cancel") {
        let c = web
            .post(
                &format!("/console/campaigns/{id}/cancel"),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(c.status, 404, "not available yet: {}", c.html);
        assert!(c.html.contains("not available yet"));
    }
    // Bad input: the API's refusal in plain words, nothing paid.
    let before = app.credits(&t.key).await;
    let wrong = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("numbers", "+60123450012"),
            ],
        )
        .await;
    assert_eq!(wrong.status, 422, "{}", wrong.html);
    assert!(wrong.html.contains("Not done:"));
    assert!(
        wrong.html.contains("+60123450012"),
        "what was typed stays in the form"
    );
    let empty = web
        .post(
            "/console/campaigns",
            &[("csrf", &csrf), ("template", "order_update:en_US")],
        )
        .await;
    assert_eq!(empty.status, 400);
    assert!(empty.html.contains("paste their numbers"));
    assert_eq!(app.credits(&t.key).await, before);
    // Another tenant's campaign is not found.
    let other = app.onboard(5).await;
    let (_, theirs) = call(
        &app,
        "POST",
        "/v1/broadcasts",
        Some(&other.key),
        Some(
            json!({"template": {"name": "order_update", "language": "en_US",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]},
            "recipients": ["+60123450013"]}),
        ),
    )
    .await;
    let theirs = theirs["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        web.get(&format!("/console/campaigns/{theirs}"))
            .await
            .status,
        404
    );
}

/// The retry of a campaign's failures from its page carries the template's parameters
/// again (Kirim keeps no content): with them it makes the retry campaign; without them the
/// API's refusal shows on the page, nothing paid.
async fn a_campaign_s_failures_are_retried_from_its_page_with_the_template_s_parameters(
    b: Backend,
) {
    if !campaigns::action_available(Role::Operator, "retry-failed") {
        return;
    }
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    // A recipient ending 0004: Meta's transient error, every try (a retryable failure).
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-8"),
                ("numbers", "+60123450004"),
            ],
        )
        .await;
    let id = campaign_of(&made);
    // Completed, not only failed: a retry is refused as still sending until its fan-out's
    // last write closes it, which may land after its one message failed.
    let settled = broadcast_when(&app, &t.key, &id, |b| {
        b["counts"]["failed"] == 1 && b["status"] == "completed"
    })
    .await;
    assert_eq!(settled["counts"]["failed"], 1, "{settled}");
    assert_eq!(settled["status"], "completed", "{settled}");
    let page = web.get(&format!("/console/campaigns/{id}")).await;
    assert!(page.html.contains(r#"name="parameters""#), "{}", page.html);
    let csrf = page.csrf();
    let before = app.credits(&t.key).await;
    let bare = web
        .post(
            &format!("/console/campaigns/{id}/retry-failed"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(bare.status, 422, "{}", bare.html);
    assert!(bare.html.contains("Not done:"), "{}", bare.html);
    assert_eq!(app.credits(&t.key).await, before, "nothing paid");
    let retried = web
        .post(
            &format!("/console/campaigns/{id}/retry-failed"),
            &[("csrf", &csrf), ("parameters", "ORDER-8")],
        )
        .await;
    let new_id = campaign_of(&retried);
    assert_ne!(new_id, id);
    assert!(retried.location().ends_with("done=campaign_retried"));
    assert_eq!(app.credits(&t.key).await, before - 1);
    // Retried once: the page names the retry and offers no second one.
    let page = web.get(&format!("/console/campaigns/{id}")).await;
    assert!(page.html.contains("campaign-retried-by"), "{}", page.html);
    assert!(page.html.contains(&new_id), "{}", page.html);
    assert!(
        !page.html.contains("Retry failed messages"),
        "{}",
        page.html
    );
    // A page loaded before the retry still posts: the API's refusal shows, nothing paid.
    let again = web
        .post(
            &format!("/console/campaigns/{id}/retry-failed"),
            &[("csrf", &csrf), ("parameters", "ORDER-8")],
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.html);
    assert_eq!(app.credits(&t.key).await, before - 1);
}

/// A retry refused because its number is held reads on the campaign's page, as the other
/// refusals do, in the console's words: not a bare "Not allowed" page as for a role's
/// refusal, and no API route an operator cannot call.
async fn a_retry_refused_for_a_held_number_says_why_on_the_campaign_s_page(b: Backend) {
    if !campaigns::action_available(Role::Operator, "retry-failed") {
        return;
    }
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-8"),
                ("numbers", "+60123450004"),
            ],
        )
        .await;
    let id = campaign_of(&made);
    // Completed, not only failed: a retry is refused as still sending until its fan-out's
    // last write closes it, which may land after its one message failed.
    let settled = broadcast_when(&app, &t.key, &id, |b| {
        b["counts"]["failed"] == 1 && b["status"] == "completed"
    })
    .await;
    assert_eq!(settled["counts"]["failed"], 1, "{settled}");
    assert_eq!(settled["status"], "completed", "{settled}");
    // Meta then limits the number for spam: it is held.
    let pnid = t.phone_number_id.clone();
    let res = app
        .http
        .put(app.url(&format!("/_sandbox/phone-numbers/{pnid}")))
        .json(&json!({"send_error": 131048}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let held = app.send_ok(&t.key, "+60123454001").await;
    app.wait_status(&t.key, &held, "failed").await;
    let page = web.get(&format!("/console/campaigns/{id}")).await;
    let csrf = page.csrf();
    let before = app.credits(&t.key).await;
    let refused = web
        .post(
            &format!("/console/campaigns/{id}/retry-failed"),
            &[("csrf", &csrf), ("parameters", "ORDER-8")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.html);
    assert!(refused.html.contains("Not done:"), "{}", refused.html);
    assert!(refused.html.contains("is held"), "{}", refused.html);
    assert!(
        refused.html.contains("on the dashboard"),
        "{}",
        refused.html
    );
    assert!(!refused.html.contains("POST /v1/"), "{}", refused.html);
    assert!(!refused.html.contains("Not allowed"), "{}", refused.html);
    assert!(
        refused.html.contains(&id),
        "the campaign's own page: {}",
        refused.html
    );
    assert_eq!(app.credits(&t.key).await, before, "nothing paid");
}

async fn a_campaign_is_created_from_an_uploaded_csv_file(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("template", "order_update:en_US"),
        ("parameters", "ORDER-8"),
        ("numbers", ""),
    ];
    let csv = b"name,Phone\nAminah,+60123450021\nBala,+60123450022\nBala again,+60123450022\n";
    let made = web
        .post_multipart("/console/campaigns", &fields, &[("file", "list.csv", csv)])
        .await;
    let id = campaign_of(&made);
    let (s, view) = call(
        &app,
        "GET",
        &format!("/v1/broadcasts/{id}"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(view["accepted"], 2, "{view}");
    assert_eq!(view["duplicates"], 1, "{view}");
    // A file without a phone column: the API's CSV reader says what is wrong.
    let before = app.credits(&t.key).await;
    let bad = web
        .post_multipart(
            "/console/campaigns",
            &fields,
            &[("file", "list.csv", b"name,number\nA,+60123450023\n")],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.html);
    assert!(bad.html.contains("phone"), "{}", bad.html);
    // Pasted numbers and a file at once: which one was meant is not guessed.
    let both = [
        ("numbers", "+60123450024"),
        ("csrf", csrf.as_str()),
        ("template", "order_update:en_US"),
    ];
    let both = web
        .post_multipart("/console/campaigns", &both, &[("file", "list.csv", csv)])
        .await;
    assert_eq!(both.status, 400);
    assert!(both.html.contains("not both"));
    // A file over the form's 2 MiB: said so, not "reload the page".
    let mut big = b"phone,notes\n".to_vec();
    while big.len() <= kirim::console::campaigns::UPLOAD_LIMIT {
        big.extend_from_slice(b"+60123450025,a long note nobody needs for sending\n");
    }
    let large = web
        .post_multipart("/console/campaigns", &fields, &[("file", "list.csv", &big)])
        .await;
    assert_eq!(large.status, 413, "{}", large.html);
    assert!(large.html.contains("larger than 2 MiB"), "{}", large.html);
    assert_eq!(app.credits(&t.key).await, before);
}

async fn pasted_numbers_may_be_written_as_people_write_them_and_the_invalid_ones_are_named(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let numbers =
        "+60 12-345 0031\n+60123450032 +60123450033; (+60) 12.345.0034\n0123450035, +6012x";
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-9"),
                ("numbers", numbers),
                ("idempotency_key", &kirim::domain::new_id()),
            ],
        )
        .await;
    assert_eq!(made.status, 200, "shown at once: {}", made.html);
    assert!(
        made.html.contains(
            "2 of the entries were not valid E.164 numbers and were not sent: 0123450035, +6012x."
        ),
        "{}",
        made.html
    );
    let (_, list) = call(&app, "GET", "/v1/broadcasts", Some(&t.key), None).await;
    let id = list["broadcasts"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, view) = call(
        &app,
        "GET",
        &format!("/v1/broadcasts/{id}"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(view["accepted"], 4, "{view}");
    assert_eq!(view["invalid_count"], 2, "{view}");
    assert_eq!(app.credits(&t.key).await, 10 - 4);
}

/// A CSV file well inside the form's 10,000 rows and 2 MiB whose cells are long (notes
/// beside the number, numbers written with spaces and dashes) is taken: its numbers as
/// people write them are numbers, the rest are named and counted, and the request the
/// console makes of them still fits the API's 256 KiB body (it was refused `413`).
async fn a_csv_of_long_cells_within_the_forms_limits_makes_its_campaign(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("template", "order_update:en_US"),
        ("parameters", "ORDER-7"),
        ("numbers", ""),
    ];
    let mut csv = String::from("phone,name\n\"+60 12-345 0051\",Aminah\n(+60) 12.345.0052,Bala\n");
    for i in 0..7_000 {
        csv.push_str(&format!(
            "\"+60 12-500 {i:04} (mobile, home, office)\",Someone\n"
        ));
    }
    assert!(csv.len() < kirim::console::campaigns::UPLOAD_LIMIT);
    let made = web
        .post_multipart(
            "/console/campaigns",
            &fields,
            &[("file", "list.csv", csv.as_bytes())],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.html);
    assert!(
        made.html
            .contains("7000 of the entries were not valid E.164 numbers")
            && made.html.contains("+60125000000mobile,home,office,"),
        "named whole, as written without its spaces and brackets: {}",
        made.html
    );
    let (_, list) = call(&app, "GET", "/v1/broadcasts", Some(&t.key), None).await;
    let id = list["broadcasts"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, view) = call(
        &app,
        "GET",
        &format!("/v1/broadcasts/{id}"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(view["accepted"], 2, "{view}");
    assert_eq!(view["invalid_count"], 7_000, "{view}");
    assert_eq!(app.credits(&t.key).await, 10 - 2);
}

/// Enrols and confirms 2FA through the API with the session `token`.
async fn turn_on_2fa(app: &TestApp, token: &str) {
    let (_, e) = call(app, "POST", "/v1/auth/2fa/enroll", Some(token), None).await;
    let totp = super::console::totp_of(e["secret"].as_str().unwrap_or_default());
    let code = totp.generate(chrono::Utc::now().timestamp() as u64);
    let body = Some(json!({"totp_code": code}));
    let (st, _) = call(app, "POST", "/v1/auth/2fa/confirm", Some(token), body).await;
    assert_eq!(st, 200);
}

async fn the_two_factor_page_offers_set_up_only_to_a_user_without_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let mut web = sign_in(&app, &email).await;
    let page = web.get("/console/2fa").await;
    assert!(page.html.contains("/console/2fa/enroll"), "{}", page.html);
    // Enrolled through the API with the same session, then the page says it is on.
    turn_on_2fa(&app, &web.session()).await;
    let page = web.get("/console/2fa").await;
    assert!(!page.html.contains("/console/2fa/enroll"), "{}", page.html);
    assert!(
        page.html.contains("It is on for your sign-ins"),
        "{}",
        page.html
    );
}

/// An admin without 2FA who requires it of everyone lands on the 2FA page, told that the
/// requirement was saved and why every other page now leads there.
async fn an_admin_who_requires_2fa_without_it_is_told_why_the_2fa_page_is_all_there_is(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/settings").await.csrf();
    let saved = web
        .post(
            "/console/settings/2fa",
            &[("csrf", &csrf), ("required", "true")],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.html);
    let landed = web.get(saved.location()).await;
    assert_eq!(landed.status, 303, "confined: {}", landed.html);
    assert_eq!(landed.location(), "/console/2fa?done=two_factor_setting");
    let page = web.get(landed.location()).await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html.contains("The two-factor requirement was saved."),
        "{}",
        page.html
    );
    assert!(
        page.html.contains(r#"id="two-factor-required""#),
        "{}",
        page.html
    );
    assert!(page.html.contains("/console/2fa/enroll"), "{}", page.html);
    // Any other page leads there, without a notice nobody asked for.
    let other = web.get("/console/messages").await;
    assert_eq!(
        (other.status, other.location()),
        (303, "/console/2fa"),
        "{}",
        other.html
    );
}

/// A role that may not act is refused at once (`403`, the API's refusal, audited), whatever
/// its form held: never shown a confirmation page offering what it may not do, nor asked to
/// mend a form it may not send.
async fn a_role_that_may_not_act_is_refused_at_once_not_asked_to_confirm_or_mend(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (read_only, reader_id) = new_user(&app, &t.key, "read_only").await;
    let (operator, _) = new_user(&app, &t.key, "operator").await;
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/opt-outs/%2B60123459961",
        Some(&t.key),
        None,
    )
    .await;
    assert!(s == 200 || s == 201, "{s}");
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (s, made) = call(
        &app,
        "POST",
        "/v1/broadcasts",
        Some(&t.key),
        Some(json!({
            "template": {"name": "order_update", "language": "en_US", "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]},
            "recipients": ["+60123450051"],
            "send_at": at,
        })),
    )
    .await;
    assert_eq!(s, 202, "{made}");
    let campaign = made["id"].as_str().unwrap().to_owned();
    let (_, keys) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    let key_id = keys["api_keys"][0]["id"].as_str().unwrap().to_owned();
    let revoke = format!("/console/api-keys/{key_id}/revoke");
    let remove_user = format!("/console/users/{reader_id}/remove");
    let cancel = format!("/console/campaigns/{campaign}/cancel");
    for (email, forms) in [
        (
            &read_only,
            vec![
                (revoke.as_str(), vec![("name", "x")]),
                (remove_user.as_str(), vec![("email", "x@example.com")]),
                ("/console/opt-outs/remove", vec![("phone", "+60123459961")]),
                ("/console/opt-outs/remove", vec![("phone", "")]),
                ("/console/opt-outs", vec![("phone", "")]),
                (cancel.as_str(), vec![]),
                ("/console/campaigns", vec![("template", "bad")]),
                ("/console/campaigns", vec![("send_at", "garbage")]),
            ],
        ),
        (
            &operator,
            vec![
                (revoke.as_str(), vec![("name", "x")]),
                (remove_user.as_str(), vec![("email", "x@example.com")]),
                ("/console/opt-outs/remove", vec![("phone", "+60123459961")]),
            ],
        ),
    ] {
        let mut web = sign_in(&app, email).await;
        let csrf = web.get("/console/").await.csrf();
        for (path, fields) in forms {
            let mut sent = vec![("csrf", csrf.as_str())];
            sent.extend(fields.iter().copied());
            let page = web.post(path, &sent).await;
            assert_eq!(page.status, 403, "{email} {path} {fields:?}: {}", page.html);
            assert!(
                !page.html.contains(r#"name="confirm""#),
                "{path}: offered to confirm: {}",
                page.html
            );
        }
    }
    // Nothing changed.
    let (s, _) = call(
        &app,
        "GET",
        "/v1/opt-outs/%2B60123459961",
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(s, 200, "the opt-out stays");
    let (_, keys) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    assert_eq!(keys["api_keys"][0]["status"], "active", "{keys}");
    let (_, users) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    assert!(
        users["users"]
            .as_array()
            .is_some_and(|l| l.iter().any(|u| u["id"] == reader_id.as_str())),
        "the user stays: {users}"
    );
    let (_, view) = call(
        &app,
        "GET",
        &format!("/v1/broadcasts/{campaign}"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(view["status"], "scheduled", "{view}");
    let (_, list) = call(&app, "GET", "/v1/broadcasts", Some(&t.key), None).await;
    assert_eq!(
        list["broadcasts"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
}

/// A scheduled campaign paused and resumed waits for its send time again, and the notice
/// says so (it said "sending again").
async fn a_resumed_scheduled_campaign_is_said_to_wait_for_its_send_time(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let at = (chrono::Utc::now() + chrono::Duration::minutes(30))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-12"),
                ("numbers", "+60123450043"),
                ("send_at", &at),
            ],
        )
        .await;
    let id = campaign_of(&made);
    for action in ["pause", "resume"] {
        let done = web
            .post(
                &format!("/console/campaigns/{id}/{action}"),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(done.status, 303, "{action}: {}", done.html);
        if action == "resume" {
            let page = web.get(done.location()).await;
            assert!(
                page.html.contains("The campaign is scheduled again"),
                "{}",
                page.html
            );
            assert!(!page.html.contains("sending again"), "{}", page.html);
        }
    }
}

/// Where the tenant requires 2FA, a password-only console sign-in is confined to the 2FA
/// page; when its user turned 2FA on from another session meanwhile, the page says to sign
/// in again with a code (it cannot set up again), instead of sending them to an admin.
async fn a_sign_in_made_before_its_user_turned_on_2fa_elsewhere_is_told_to_sign_in_again(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (st, _) = call(
        &app,
        "PUT",
        "/v1/settings/2fa",
        Some(&t.key),
        Some(json!({"required": true})),
    )
    .await;
    assert_eq!(st, 200);
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let mut web = super::console::sign_in_to(&app, &email, "/console/2fa").await;
    let other = super::console::sign_in_to(&app, &email, "/console/2fa").await;
    turn_on_2fa(&app, &other.session()).await;
    let page = web.get("/console/2fa").await;
    assert!(
        page.html.contains("sign in again with a code"),
        "{}",
        page.html
    );
    assert!(!page.html.contains("/console/2fa/enroll"), "{}", page.html);
    assert!(!page.html.contains("an admin can remove"), "{}", page.html);
}

async fn a_user_changes_their_password_from_the_console_and_signs_in_again_with_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let mut web = sign_in(&app, &email).await;
    let mut other = sign_in(&app, &email).await;
    let page = web.get("/console/2fa").await;
    assert!(
        page.html.contains(r#"action="/console/password""#),
        "{}",
        page.html
    );
    let csrf = page.csrf();
    const NEW: &str = "a console passphrase, long enough";
    assert_eq!(
        web.post(
            "/console/password",
            &[("current_password", PASSWORD), ("new_password", NEW)]
        )
        .await
        .status,
        403,
        "no CSRF token"
    );
    let wrong = web
        .post(
            "/console/password",
            &[
                ("csrf", &csrf),
                ("current_password", "not the password"),
                ("new_password", NEW),
            ],
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.html);
    // Said in the form's words, not the API's field name.
    assert!(
        wrong.html.contains("the current password does not match"),
        "{}",
        wrong.html
    );
    assert!(
        !wrong.html.contains("current_password does"),
        "{}",
        wrong.html
    );
    assert!(!wrong.html.contains("not the password"), "never shown back");
    let changed = web
        .post(
            "/console/password",
            &[
                ("csrf", &csrf),
                ("current_password", PASSWORD),
                ("new_password", NEW),
            ],
        )
        .await;
    assert_eq!(changed.status, 303, "{}", changed.html);
    assert_eq!(changed.location(), "/console/login?done=password_changed");
    // Signed out here and in the other browser.
    for browser in [&mut web, &mut other] {
        let after = browser.get("/console/messages").await;
        assert_eq!(after.status, 303, "{}", after.html);
        assert!(
            after.location().starts_with("/console/login"),
            "{}",
            after.location()
        );
    }
    let (s, _) = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": NEW})),
    )
    .await;
    assert_eq!(s, 200, "the new password signs in");
}

async fn the_campaign_form_refuses_a_post_without_its_csrf_token_and_a_read_only_user(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (operator, _) = new_user(&app, &t.key, "operator").await;
    let (reader, _) = new_user(&app, &t.key, "read_only").await;
    let before = app.credits(&t.key).await;
    let mut web = sign_in(&app, &operator).await;
    let form = [
        ("template", "order_update:en_US"),
        ("parameters", "x"),
        ("numbers", "+60123450031"),
    ];
    assert_eq!(web.post("/console/campaigns", &form).await.status, 403);
    let forged = web.post_multipart("/console/campaigns", &form, &[]).await;
    assert_eq!(forged.status, 403, "multipart too");
    assert_eq!(
        web.post_multipart("/console/campaigns", &[("csrf", "00ff")], &[])
            .await
            .status,
        403
    );
    let mut ro = sign_in(&app, &reader).await;
    let page = ro.get("/console/campaigns").await;
    assert_eq!(page.status, 200);
    assert!(
        !page.html.contains("New campaign"),
        "a read-only user is not offered it"
    );
    let mut with_token = form.to_vec();
    let csrf = page.csrf();
    with_token.push(("csrf", &csrf));
    assert_eq!(ro.post("/console/campaigns", &with_token).await.status, 403);
    assert_eq!(
        app.credits(&t.key).await,
        before,
        "nothing was sent or paid"
    );
}

async fn a_failed_message_shows_what_its_failure_means_and_what_to_do(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let id = app.send_ok(&t.key, "+60123450001").await;
    let m = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(m["status"], "failed", "{m}");
    let mut web = sign_in(&app, &email).await;
    let page = web.get(&format!("/console/messages/{id}")).await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("131026"));
    assert!(page.html.contains(r#"id="message-hint""#), "{}", page.html);
    assert!(page.html.contains("Check the number with the customer"));
    let fine = app.send_ok(&t.key, "+60123450009").await;
    let page = web.get(&format!("/console/messages/{fine}")).await;
    assert!(
        !page.html.contains("message-hint"),
        "no hint without a failure"
    );
    // The list filters by number, and by status.
    let by_number = web.get("/console/messages?to=%2B60123450001").await;
    assert_eq!(by_number.status, 200);
    assert!(by_number.html.contains(&id) && !by_number.html.contains(&fine));
    let by_status = web.get("/console/messages?status=failed").await;
    assert!(by_status.html.contains(&id) && !by_status.html.contains(&fine));
    let nobody = web.get("/console/messages?to=%2B60123459999").await;
    assert!(nobody.html.contains("No messages.") && !nobody.html.contains(&id));
}

async fn an_admin_unlocks_a_user_from_the_users_page(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let (locked, id) = new_user(&app, &t.key, "operator").await;
    let login = |password: &'static str| {
        let email = locked.clone();
        let app = &app;
        async move {
            call(
                app,
                "POST",
                "/v1/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await
            .0
        }
    };
    let mut web = sign_in(&app, &admin).await;
    let users = web.get("/console/users").await;
    assert!(users.html.contains(&format!("/console/users/{id}/unlock")));
    let csrf = users.csrf();
    assert_eq!(
        web.post(&format!("/console/users/{id}/unlock"), &[])
            .await
            .status,
        403,
        "no CSRF token"
    );
    // Failures until the user is slowed (each one while unlocked counts and lengthens
    // the wait), then unlocked from the page at once.
    let mut slowed = false;
    for _ in 0..20 {
        if login("not the password").await == 429 {
            slowed = true;
            break;
        }
    }
    assert!(slowed, "slowed after failures");
    let done = web
        .post(&format!("/console/users/{id}/unlock"), &[("csrf", &csrf)])
        .await;
    assert_eq!(done.status, 303, "{}", done.html);
    assert_eq!(done.location(), "/console/users?done=user_unlocked");
    assert_eq!(login(PASSWORD).await, 200, "they sign in again at once");
    let page = web.get("/console/users?done=user_unlocked").await;
    assert!(page.html.contains("they can sign in again now"));
    // An operator is offered no user controls at all.
    let mut op = sign_in(&app, &locked).await;
    assert_eq!(op.get("/console/users").await.status, 403);
}

/// Whether a user is slowed down after failed sign-ins is not known to the users list (it
/// would be a read per user), so the page does not offer every user an "Unlock" as if each
/// were locked: it offers to clear failed sign-ins, and says what that does.
async fn the_users_page_offers_to_clear_failed_sign_ins_without_calling_anyone_locked(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let (other, id) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &admin).await;
    let users = web.get("/console/users").await;
    assert_eq!(users.status, 200, "{}", users.html);
    assert!(!users.html.contains(">Unlock<"), "{}", users.html);
    assert!(
        users.html.contains(&format!(
            r#"aria-label="Clear the failed sign-ins of {}">Clear failed sign-ins</button>"#,
            other.to_lowercase()
        )),
        "{}",
        users.html
    );
    assert!(users.html.contains(&format!("/console/users/{id}/unlock")));
    assert!(
        users
            .html
            .contains("Whether a user is slowed down just now is not shown here"),
        "{}",
        users.html
    );
    // Cleared for a user who had no failures: said as what it is.
    let done = web
        .post(
            &format!("/console/users/{id}/unlock"),
            &[("csrf", &users.csrf())],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.html);
    let page = web.get(done.location()).await;
    assert!(page.html.contains("if they had any"), "{}", page.html);
}

/// The send form, sent with `template` and `language` to `to` (one body parameter).
async fn send_form(
    web: &mut Browser<'_>,
    csrf: &str,
    template: &str,
    language: &str,
    to: &str,
) -> Page {
    web.post(
        "/console/messages",
        &[
            ("csrf", csrf),
            ("idempotency_key", &kirim::domain::new_id()),
            ("to", to),
            ("template", template),
            ("language", language),
            ("category", ""),
            ("parameters", "RAYA20"),
        ],
    )
    .await
}

/// The send form suggests the sender's approved templates each with its language, so that
/// choosing one chooses both (a template in two languages is two suggestions); a bare name
/// still takes the language field; a suggestion and a language field that disagree are
/// refused, as typed. With numbers on two WABAs, the suggestions are the chosen sender's.
async fn the_send_forms_suggestions_carry_each_templates_language_and_follow_the_sender(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    // promo_sale in Malay too, on the default number's WABA.
    app.sandbox_template(
        "1000001",
        "promo_sale",
        "ms",
        json!({"category": "marketing", "status": "approved", "body_parameters": 1}),
    )
    .await;
    let (s, synced) = call(&app, "POST", "/v1/templates/sync", Some(&t.key), None).await;
    assert_eq!(s, 200, "{synced}");
    let mut web = sign_in(&app, &email).await;
    let page = web.get("/console/messages").await;
    assert_eq!(page.status, 200, "{}", page.html);
    for suggested in [
        "order_update · en_US",
        "promo_sale · en_US",
        "promo_sale · ms",
    ] {
        assert!(
            page.html
                .contains(&format!(r#"<option value="{suggested}">"#)),
            "{suggested}: {}",
            page.html
        );
    }
    let csrf = page.csrf();
    let id_of = |sent: &Page| {
        assert_eq!(sent.status, 303, "{}", sent.html);
        sent.location()
            .strip_prefix("/console/messages/")
            .and_then(|r| r.split('?').next())
            .unwrap_or_default()
            .to_owned()
    };
    // The suggestion chooses the language; the field left empty.
    let malay = send_form(&mut web, &csrf, "promo_sale · ms", "", "+60123450041").await;
    let id = id_of(&malay);
    assert_eq!(app.message(&t.key, &id).await["template"]["language"], "ms");
    let english = send_form(&mut web, &csrf, "promo_sale · en_US", "", "+60123450042").await;
    let id = id_of(&english);
    assert_eq!(
        app.message(&t.key, &id).await["template"]["language"],
        "en_US"
    );
    // A bare name: the language field, en_US when it is empty.
    let bare = send_form(&mut web, &csrf, "promo_sale", "ms", "+60123450043").await;
    let id = id_of(&bare);
    assert_eq!(app.message(&t.key, &id).await["template"]["language"], "ms");
    let bare = send_form(&mut web, &csrf, "order_update", "", "+60123450044").await;
    let id = id_of(&bare);
    assert_eq!(
        app.message(&t.key, &id).await["template"]["language"],
        "en_US"
    );
    // Two languages said: refused before any send, the form as typed.
    let before = app.credits(&t.key).await;
    let both = send_form(&mut web, &csrf, "promo_sale · ms", "en_US", "+60123450045").await;
    assert_eq!(both.status, 400, "{}", both.html);
    assert!(
        both.html
            .contains("the template chosen is in ms, but the language says en_US"),
        "{}",
        both.html
    );
    assert!(
        both.html.contains(r#"value="promo_sale · ms""#),
        "{}",
        both.html
    );
    assert!(
        both.html.contains(r#"value="+60123450045""#),
        "{}",
        both.html
    );
    assert_eq!(app.credits(&t.key).await, before, "nothing sent");

    // A second number on another WABA, where Meta paused order_update: its suggestions
    // are its catalogue's, once it is chosen.
    let waba = format!("{}", 6_000_000 + kirim_tests::rand_u32() % 900_000);
    let second = format!("{}", 3_000_000 + kirim_tests::rand_u32() % 900_000);
    let (s, body) = call(
        &app,
        "POST",
        &format!("/v1/platform/tenants/{}/phone-numbers", t.tenant_id),
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(json!({"phone_number_id": second, "waba_id": waba, "display_phone_number": "+1 555-010-2041"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    app.sandbox_template(&waba, "order_update", "en_US", json!({"status": "paused"}))
        .await;
    let default = web.get("/console/messages").await;
    assert!(
        default.html.contains(r#"id="send-sender""#),
        "{}",
        default.html
    );
    assert!(default
        .html
        .contains(r#"<option value="order_update · en_US">"#));
    let chosen = web.get(&format!("/console/messages?from={second}")).await;
    assert_eq!(chosen.status, 200, "{}", chosen.html);
    assert!(
        !chosen
            .html
            .contains(r#"<option value="order_update · en_US">"#),
        "paused on the second number's WABA: {}",
        chosen.html
    );
    assert!(chosen
        .html
        .contains(r#"<option value="promo_sale · en_US">"#));
    assert!(chosen.html.contains(&format!(
        r#"<input type="hidden" name="from" value="{second}">"#
    )));
    assert!(chosen
        .html
        .contains(&format!("Sent from +1 555-010-2041 ({second}).")));
}

async fn an_admin_changes_a_users_role_from_the_users_page_but_not_their_own(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (admin, admin_id) = new_user(&app, &t.key, "admin").await;
    let (staff, id) = new_user(&app, &t.key, "read_only").await;
    let mut web = sign_in(&app, &admin).await;
    let users = web.get("/console/users").await;
    assert!(
        users.html.contains(&format!("/console/users/{id}/role")),
        "{}",
        users.html
    );
    assert!(
        !users
            .html
            .contains(&format!("/console/users/{admin_id}/role")),
        "no role control on one's own row"
    );
    let csrf = users.csrf();
    let path = format!("/console/users/{id}/role");
    assert_eq!(
        web.post(&path, &[("role", "operator")]).await.status,
        403,
        "no CSRF token"
    );
    let bad = web.post(&path, &[("csrf", &csrf), ("role", "owner")]).await;
    assert_eq!(bad.status, 400, "{}", bad.html);
    assert!(bad.html.contains("Not done:"), "{}", bad.html);
    // A refused addition keeps the email typed.
    let short = web
        .post(
            "/console/users",
            &[
                ("csrf", &csrf),
                ("email", "kept.typed@example.com"),
                ("role", "operator"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(short.status, 400, "{}", short.html);
    assert!(
        short.html.contains(r#"value="kept.typed@example.com""#),
        "{}",
        short.html
    );
    let own = web
        .post(
            &format!("/console/users/{admin_id}/role"),
            &[("csrf", &csrf), ("role", "read_only")],
        )
        .await;
    assert_eq!(own.status, 409, "{}", own.html);
    assert!(own.html.contains("another admin can"), "{}", own.html);
    let done = web
        .post(&path, &[("csrf", &csrf), ("role", "operator")])
        .await;
    assert_eq!(done.status, 303, "{}", done.html);
    assert_eq!(done.location(), "/console/users?done=role_changed");
    let page = web.get("/console/users?done=role_changed").await;
    assert!(page.html.contains("role was changed"), "{}", page.html);
    assert!(
        page.html.contains(r#"<option value="operator" selected>"#),
        "the row shows the new role chosen: {}",
        page.html
    );
    let (_, list) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    let changed = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id.as_str())
        .cloned();
    assert_eq!(changed.unwrap()["role"], "operator");
    // The user, now an operator, is offered a new campaign (read-only is not).
    let mut op = sign_in(&app, &staff).await;
    let campaigns = op.get("/console/campaigns").await;
    assert!(
        campaigns.html.contains("New campaign"),
        "{}",
        campaigns.html
    );
    assert_eq!(op.get("/console/users").await.status, 403);
}

async fn the_send_form_takes_the_catalogues_category_and_keeps_a_refused_form_as_typed(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let page = web.get("/console/messages").await;
    let csrf = page.csrf();
    // The catalogue's approved templates are suggested as the name is typed.
    assert!(
        page.html.contains(r#"list="template-names""#)
            && page.html.contains(r#"<option value="promo_sale · en_US">"#),
        "{}",
        page.html
    );
    // A name not in the catalogue: said in words an operator can act on, not API routes.
    let unknown = web
        .post(
            "/console/messages",
            &[
                ("csrf", &csrf),
                ("idempotency_key", &kirim::domain::new_id()),
                ("to", "+60123450021"),
                ("template", "promo_sael"),
                ("language", "en_US"),
                ("category", ""),
                ("parameters", "RAYA20"),
            ],
        )
        .await;
    assert_eq!(unknown.status, 422, "{}", unknown.html);
    assert!(
        unknown.html.contains("not in the sender's catalogue") && !unknown.html.contains("/v1/"),
        "{}",
        unknown.html
    );
    // Too many parameters: refused, and the form comes back as typed.
    let refused = web
        .post(
            "/console/messages",
            &[
                ("csrf", &csrf),
                ("idempotency_key", &kirim::domain::new_id()),
                ("to", "+60123450021"),
                ("template", "promo_sale"),
                ("language", "en_US"),
                ("category", ""),
                ("parameters", "RAYA20\nextra"),
                ("client_reference", "order-77"),
            ],
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.html);
    assert!(
        refused
            .html
            .contains("takes 1 body parameter; the request gives 2"),
        "{}",
        refused.html
    );
    for typed in [
        r#"value="+60123450021""#,
        r#"value="promo_sale""#,
        r#"value="order-77""#,
        "RAYA20\nextra</textarea>",
    ] {
        assert!(
            refused.html.contains(typed),
            "{typed} kept: {}",
            refused.html
        );
    }
    // A marketing template with the category left to the catalogue goes.
    let sent = web
        .post(
            "/console/messages",
            &[
                ("csrf", &csrf),
                ("idempotency_key", &kirim::domain::new_id()),
                ("to", "+60123450021"),
                ("template", "promo_sale"),
                ("language", "en_US"),
                ("category", ""),
                ("parameters", "RAYA20\n"),
            ],
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.html);
    let id = sent
        .location()
        .strip_prefix("/console/messages/")
        .and_then(|r| r.split('?').next())
        .unwrap_or_default()
        .to_owned();
    let m = app.message(&t.key, &id).await;
    assert_eq!(m["template"]["category"], "marketing", "{m}");
    assert_eq!(app.credits(&t.key).await, 4, "one debit");
    // A send refused with 400 (a number that is none) still shows the list beside it.
    let bad_number = web
        .post(
            "/console/messages",
            &[
                ("csrf", &csrf),
                ("idempotency_key", &kirim::domain::new_id()),
                ("to", "0123"),
                ("template", "promo_sale"),
                ("language", "en_US"),
                ("category", ""),
                ("parameters", "RAYA20\n"),
            ],
        )
        .await;
    assert_eq!(bad_number.status, 400, "{}", bad_number.html);
    assert!(
        bad_number.html.contains(&id),
        "the tenant's messages listed, not \"No messages\": {}",
        bad_number.html
    );
}

/// Sign-ins refused for too many failures tell the person how long to wait, in seconds,
/// not "after Retry-After seconds" (a header no person sees), and the page carries the
/// header for the browser.
#[tokio::test]
async fn a_sign_in_held_for_too_many_failures_says_how_many_seconds_to_wait() {
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = super::console::Browser::new(&app);
    let csrf = web.get("/console/login").await.csrf();
    let mut held = None;
    for _ in 0..12 {
        let page = web
            .post(
                "/console/login",
                &[
                    ("csrf", &csrf),
                    ("email", &email),
                    ("password", "wrong-password-1"),
                ],
            )
            .await;
        if page.status == 429 {
            held = Some(page);
            break;
        }
    }
    let held = held.expect("held after repeated failures");
    let wait: u64 = held
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!(wait >= 1, "{wait}");
    assert!(
        held.html.contains(&format!("try again in {wait} second")),
        "{}",
        held.html
    );
    assert!(!held.html.contains("Retry-After"), "{}", held.html);
}

/// A key form sent twice (a double click, a reload) makes two keys, the first shown to no
/// one: the second page says another active key of that name was just made, to revoke if
/// nobody copied it. A key of another name says nothing of the kind.
#[tokio::test]
async fn a_key_form_sent_twice_says_another_key_of_that_name_was_just_made() {
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/api-keys").await.csrf();
    let first = [
        ("csrf", csrf.as_str()),
        ("name", "crm-sync"),
        ("role", "operator"),
    ];
    let page = web.post("/console/api-keys", &first).await;
    assert_eq!(page.status, 201, "{}", page.html);
    assert!(!page.html.contains("Another active key"), "{}", page.html);
    let page = web.post("/console/api-keys", &first).await;
    assert_eq!(page.status, 201, "{}", page.html);
    assert!(
        page.html
            .contains("Another active key of that name was created at 20"),
        "{}",
        page.html
    );
    let other = [
        ("csrf", csrf.as_str()),
        ("name", "billing"),
        ("role", "operator"),
    ];
    let page = web.post("/console/api-keys", &other).await;
    assert!(!page.html.contains("Another active key"), "{}", page.html);
}

/// A rotation sent twice (a double click, a reload) rotates once; the second is refused
/// and says what stands: when the old key stops working and which key replaced it, whose
/// secret the first answer showed to no one.
#[tokio::test]
async fn a_rotation_sent_twice_says_the_key_was_already_rotated_and_names_its_replacement() {
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &email).await;
    let (st, made) = call(
        &app,
        "POST",
        "/v1/api-keys",
        Some(&t.key),
        Some(json!({"name": "billing-sync", "role": "operator"})),
    )
    .await;
    assert_eq!(st, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_owned();
    let csrf = web.get("/console/api-keys").await.csrf();
    let path = format!("/console/api-keys/{id}/rotate");
    let first = web.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(first.status, 201, "{}", first.html);
    let second = web.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(second.status, 409, "{}", second.html);
    assert!(
        second.html.contains("already rotated") && second.html.contains("stops working at 20"),
        "{}",
        second.html
    );
    assert!(
        second.html.contains("Its replacement is “billing-sync”"),
        "names the replacement: {}",
        second.html
    );
}

/// Signing out forgets the session in the browser whatever the API answered: a sign-out
/// refused for a moment (here the tenant's request limit) must not leave a shared computer
/// signed in; the page says the server could not confirm the end. (The console's own rule,
/// one backend: the limiter's refill outpaces the emulator's calls.)
#[tokio::test]
async fn a_sign_out_the_api_refuses_for_a_moment_still_forgets_the_session_in_the_browser() {
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let (st, _) = call(
        &app,
        "PUT",
        &format!("/v1/platform/tenants/{}/limits", t.tenant_id),
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(json!({"requests_per_sec": 1, "burst": 1})),
    )
    .await;
    assert_eq!(st, 200);
    // The limit refills a request a second: on a busy machine the sign-out may come after
    // a refill and go through (then signed out everywhere, which is right): tried again.
    let mut tries = 0;
    let (mut web, out) = loop {
        tries += 1;
        let mut web = sign_in(&app, &email).await;
        let csrf = web.get("/console/messages").await.csrf();
        let mut limited = false;
        for _ in 0..20 {
            let (st, _) = call(&app, "GET", "/v1/account", Some(&t.key), None).await;
            if st == 429 {
                limited = true;
                break;
            }
        }
        assert!(limited, "the tenant is at its limit");
        let out = web.post("/console/logout", &[("csrf", &csrf)]).await;
        assert_eq!(out.status, 303, "{}", out.html);
        if out.location() == "/console/login?done=signed_out_here" || tries == 5 {
            break (web, out);
        }
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    };
    assert_eq!(out.location(), "/console/login?done=signed_out_here");
    assert!(
        out.set_cookies()
            .iter()
            .any(|c| c.starts_with("kirim_session=;") && c.contains("Max-Age=0")),
        "{:?}",
        out.set_cookies()
    );
    let page = web.get("/console/login?done=signed_out_here").await;
    assert!(
        page.html.contains("signed out in this browser"),
        "{}",
        page.html
    );
}

/// Secrets that cannot be read (Secrets Manager unavailable).
struct SecretsDown;

#[async_trait::async_trait]
impl kirim::ports::SecretStore for SecretsDown {
    async fn put_secret(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
    ) -> Result<(), kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn get_secret(
        &self,
        _: &str,
    ) -> Result<Option<kirim::secret::Secret>, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn get_previous_secret(
        &self,
        _: &str,
    ) -> Result<Option<kirim::secret::Secret>, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn rotated_at(
        &self,
        _: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn delete_secret(&self, _: &str) -> Result<(), kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn replace_secret(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
    ) -> Result<(), kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn stage_secret(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
    ) -> Result<String, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn promote_secret(&self, _: &str, _: &str) -> Result<(), kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn get_secret_version(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<kirim::secret::Secret>, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
    async fn list_secrets(
        &self,
        _: &str,
        _: Option<&str>,
        _: usize,
    ) -> Result<kirim::ports::SecretPage, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
}

/// A sign-out posted without the session cookie (another site's form: the `SameSite=Strict`
/// cookie does not go with its request) forgets nothing: no cookie is cleared, so nobody
/// can sign a user out from elsewhere.
async fn a_sign_out_posted_without_the_session_cookie_clears_no_cookie(b: Backend) {
    let app = spawn_app(b).await;
    let out = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(app.url("/console/logout"))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(
        out.headers()["location"].to_str().unwrap(),
        "/console/login"
    );
    assert!(
        out.headers().get("set-cookie").is_none(),
        "{:?}",
        out.headers()
    );
}

/// A sign-out whose session the console cannot check (here its CSRF key unreadable; a
/// storage error reading the session answers the same) still makes the browser forget the
/// session: the error page in its place left a shared computer signed in.
async fn a_sign_out_the_console_cannot_check_still_forgets_the_session_in_the_browser(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/messages").await.csrf();
    let mut down = app.app.deps.clone();
    down.secrets = std::sync::Arc::new(kirim::service::SecretCache::new(
        std::sync::Arc::new(SecretsDown),
        Duration::ZERO,
    ));
    let (base, cookie) = crate::crash_recovery::console_on(down, &web).await;
    let out = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/console/logout"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(
        out.headers()["location"].to_str().unwrap(),
        "/console/login?done=signed_out_here"
    );
    let cookies: Vec<&str> = out
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("kirim_session=;") && c.contains("Max-Age=0")),
        "{cookies:?}"
    );
}

async fn a_console_admin_cannot_remove_themselves_but_another_admin_can(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (first, first_id) = new_user(&app, &t.key, "admin").await;
    let (second, second_id) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &first).await;
    let users = web.get("/console/users").await;
    assert!(!users
        .html
        .contains(&format!("/console/users/{first_id}/remove")));
    assert!(users
        .html
        .contains(&format!("/console/users/{second_id}/remove")));
    let csrf = users.csrf();
    let own = web
        .post(
            &format!("/console/users/{first_id}/remove"),
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(own.status, 409, "{}", own.html);
    assert!(own.html.contains("another admin can"), "{}", own.html);
    let token = super::users::login_ok(&app, &first).await;
    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/v1/users/{first_id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );
    let mut other = sign_in(&app, &second).await;
    let csrf = other.get("/console/users").await.csrf();
    // The Remove button asks first, naming the user, and removes nothing.
    let asked = other
        .post(
            &format!("/console/users/{first_id}/remove"),
            &[("csrf", &csrf), ("email", &first)],
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.html);
    assert!(
        asked.html.contains(&format!("Remove the user {first}?")),
        "{}",
        asked.html
    );
    assert!(asked.html.contains(r#"name="confirm" value="yes""#));
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&token), None).await.0,
        200,
        "not removed yet"
    );
    let removed = other
        .post(
            &format!("/console/users/{first_id}/remove"),
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(removed.status, 303, "{}", removed.html);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&token), None).await.0,
        401
    );
}

async fn the_pages_say_what_is_so_a_suspension_every_status_and_no_password_to_fill(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &admin).await;
    // The callback's secret is not a password for a password manager to fill in.
    let settings = web.get("/console/settings").await;
    assert!(
        settings.html.contains(
            r#"id="cb-secret" type="password" name="secret" autocomplete="new-password""#
        ),
        "{}",
        settings.html
    );
    // Every status can be filtered on, scheduled and cancelled included.
    let messages = web.get("/console/messages").await;
    for status in ["scheduled", "cancelled"] {
        assert!(
            messages
                .html
                .contains(&format!(r#"<option value="{status}""#)),
            "{status}"
        );
    }
    // A suspended account's campaign is refused for that reason, not for the role.
    let (st, _) = call(
        &app,
        "POST",
        &format!("/v1/platform/tenants/{}/suspend", t.tenant_id),
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(json!({"reason": "unpaid invoice"})),
    )
    .await;
    assert_eq!(st, 200);
    let form = web.get("/console/campaigns").await;
    let refused = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &form.csrf()),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-7"),
                ("numbers", "+60123450011"),
            ],
        )
        .await;
    assert_eq!(refused.status, 403);
    assert!(refused.html.contains("suspended"), "{}", refused.html);
    assert!(!refused.html.contains("Your role does not allow this"));
}

async fn a_double_submitted_campaign_form_makes_one_campaign_and_one_debit(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let form = web.get("/console/campaigns").await;
    let marker = r#"name="idempotency_key" value=""#;
    let start = form.html.find(marker).expect("the form's key") + marker.len();
    let key = form.html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(!key.is_empty());
    let csrf = form.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("idempotency_key", key.as_str()),
        ("template", "order_update:en_US"),
        ("parameters", "ORDER-7"),
        ("numbers", "+60123450011\n+60123450001"),
    ];
    let first = web.post("/console/campaigns", &fields).await;
    assert_eq!(first.status, 303, "{}", first.html);
    let credits = app.credits(&t.key).await;
    // The second click (or a resubmission after a slow answer): the same campaign.
    let second = web.post("/console/campaigns", &fields).await;
    assert_eq!(second.status, 303, "{}", second.html);
    assert_eq!(second.location(), first.location());
    assert_eq!(app.credits(&t.key).await, credits, "one debit");
    // The next form shown has a key of its own.
    let next = web.get("/console/campaigns").await;
    assert!(!next.html.contains(&key));
}

async fn a_closed_tenants_user_is_signed_out_not_sent_round_in_circles(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &admin).await;
    assert_eq!(web.get("/console/").await.status, 200);
    let (st, _) = call(
        &app,
        "DELETE",
        &format!("/v1/platform/tenants/{}", t.tenant_id),
        Some(kirim_tests::OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(st, 200);
    // The session ends with the tenant: the sign-in page shows its form, instead of
    // sending the browser back to pages that refuse it (a redirect loop).
    let page = web.get("/console/").await;
    assert_eq!(
        (page.status, page.location()),
        (303, "/console/login?ended=1")
    );
    assert_eq!(web.get("/console/login").await.status, 200);
    // And the user cannot sign in again: answered as an unknown email is.
    let (st, body) = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"email": admin, "password": PASSWORD})),
    )
    .await;
    assert_eq!(
        (st, &body["error"]["code"]),
        (401, &json!("invalid_credentials"))
    );
}

async fn usage_and_phone_numbers_show_what_the_api_has_and_say_so_when_it_has_not(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let mut web = sign_in(&app, &email).await;
    let dash = web.get("/console/").await;
    assert_eq!(dash.status, 200);
    let has_usage = usage::usage_available(Role::ReadOnly);
    assert_eq!(dash.html.contains(r#"href="/console/usage""#), has_usage);
    let page = web.get("/console/usage").await;
    assert_eq!(page.status, 200, "{}", page.html);
    if has_usage {
        assert!(page.html.contains(r#"id="usage""#));
        assert_eq!(web.get("/console/usage?from=yesterday").await.status, 400);
    } else {
        assert!(page.html.contains("not available yet"));
    }
}

/// A range `GET /v1/usage` would refuse (From after To, more than 366 days, not days) shows
/// only its refusal, in the form's words (its From and To, not the API's parameters), with
/// the form as filled in; no "No usage in these days", which is for a range with none.
async fn a_refused_usage_range_shows_only_its_refusal_in_the_forms_words(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let mut web = sign_in(&app, &email).await;
    if !usage::usage_available(Role::ReadOnly) {
        return;
    }
    for (from, to, said) in [
        (
            "2026-03-10",
            "2026-03-01",
            "the From day must not be after the To day",
        ),
        (
            "2025-01-01",
            "2026-01-02",
            "the range from the From day to the To day may cover at most 366 days",
        ),
        (
            "yesterday",
            "2026-03-01",
            "the From day must be a day (YYYY-MM-DD)",
        ),
        (
            "2026-03-01",
            "2026-02-30",
            "the To day must be a day (YYYY-MM-DD)",
        ),
        (
            "bogus",
            "bogus",
            "the From and To days must be days (YYYY-MM-DD)",
        ),
    ] {
        let p = web
            .get(&format!("/console/usage?from={from}&to={to}"))
            .await;
        assert_eq!(p.status, 400, "{from}..{to}: {}", p.html);
        assert!(p.html.contains(said), "{from}..{to}: {}", p.html);
        assert!(
            !p.html.contains("No usage in these days"),
            "{from}..{to}: {}",
            p.html
        );
        assert!(
            !p.html.contains("from must") && !p.html.contains("to must"),
            "the API's parameter names: {}",
            p.html
        );
        assert!(
            p.html.contains(&format!(r#"name="from" value="{from}""#))
                && p.html.contains(&format!(r#"name="to" value="{to}""#)),
            "the form as filled in: {}",
            p.html
        );
    }
    // A range with no usage in it says so.
    let p = web
        .get("/console/usage?from=2026-03-01&to=2026-03-01")
        .await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains("No usage in these days"), "{}", p.html);
    // A To alone is the 30 days up to it, not a range from a From the page chose.
    let p = web.get("/console/usage?to=2026-03-01").await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(
        p.html.contains(r#"name="from" value="2026-01-31""#),
        "{}",
        p.html
    );
}

/// A number Meta's spam limit held is shown held on the dashboard, with Meta's code; an
/// admin resumes it there (a confirmation first, the CSRF token checked), a read-only user
/// is offered no button.
async fn a_held_number_is_shown_and_an_admin_resumes_it_from_the_dashboard(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let pnid = t.phone_number_id.clone();
    let res = app
        .http
        .put(app.url(&format!("/_sandbox/phone-numbers/{pnid}")))
        .json(&json!({"send_error": 131048}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = app.send_ok(&t.key, "+60123454001").await;
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["code"], 131048, "{view}");
    let action = format!("/console/phone-numbers/{pnid}/resume");

    let (reader, _) = new_user(&app, &t.key, "read_only").await;
    let mut web = sign_in(&app, &reader).await;
    let dash = web.get("/console/").await;
    assert!(dash.html.contains("Held"), "{}", dash.html);
    // The hold's words in one element: at 375 px a stacked cell puts its children beside
    // its label, and loose text fell under the label.
    assert!(
        dash.html
            .contains(r#"<td data-label="Sending"><div class="hold"><strong class="held">Held</strong> since "#),
        "{}",
        dash.html
    );
    assert!(dash.html.contains("131048"), "{}", dash.html);
    assert!(
        !dash.html.contains(&action),
        "no button for a read-only user"
    );

    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &admin).await;
    let dash = web.get("/console/").await;
    assert!(dash.html.contains(&action), "{}", dash.html);
    let csrf = dash.csrf();
    assert_eq!(web.post(&action, &[]).await.status, 403, "no CSRF token");
    let asked = web.post(&action, &[("csrf", &csrf)]).await;
    assert_eq!(asked.status, 200, "{}", asked.html);
    assert!(asked.html.contains("Resume sending from"), "{}", asked.html);
    let (_, numbers) = call(&app, "GET", "/v1/phone-numbers", Some(&t.key), None).await;
    assert_eq!(
        numbers["phone_numbers"][0]["hold"]["code"], 131048,
        "not yet: {numbers}"
    );
    let done = web
        .post(&action, &[("csrf", &csrf), ("confirm", "yes")])
        .await;
    assert_eq!(done.status, 303, "{}", done.html);
    assert_eq!(done.location(), "/console/?done=number_resumed");
    let (_, numbers) = call(&app, "GET", "/v1/phone-numbers", Some(&t.key), None).await;
    assert_eq!(
        numbers["phone_numbers"][0]["hold"],
        Value::Null,
        "{numbers}"
    );
    let dash = web.get("/console/?done=number_resumed").await;
    assert!(dash.html.contains("sends again"), "{}", dash.html);
    assert!(!dash.html.contains(&action), "{}", dash.html);
}

/// A day past chrono's last date (a signed year of six digits, which chrono's `%Y` reads)
/// and other days that are not `YYYY-MM-DD` are a 400 with the page, on the messages, audit
/// and usage pages alike, and the pages still answer afterwards.
async fn a_day_the_calendar_cannot_end_is_a_400_on_every_dated_page(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &admin).await;
    let last = "%2B262142-12-31";
    for page in [
        format!("/console/messages?date={last}"),
        format!("/console/audit?until={last}"),
        format!("/console/audit?since={last}"),
        "/console/messages?date=2026-1-05".to_owned(),
        "/console/audit?until=02026-01-05".to_owned(),
    ] {
        let p = web.get(&page).await;
        assert_eq!(p.status, 400, "{page}: {}", p.html);
        assert!(p.html.contains("YYYY-MM-DD"), "{page}: {}", p.html);
    }
    if usage::usage_available(Role::Admin) {
        let p = web.get(&format!("/console/usage?to={last}")).await;
        assert_eq!(p.status, 400, "{}", p.html);
    }
    assert_eq!(
        web.get("/console/messages?date=2026-12-02").await.status,
        200
    );
    assert_eq!(web.get("/console/audit?until=2026-12-02").await.status, 200);
    // Days the wrong way round: said in the form's words; one day is From and To alike.
    let p = web
        .get("/console/audit?since=2026-12-03&until=2026-12-02")
        .await;
    assert_eq!(p.status, 400, "{}", p.html);
    assert!(
        p.html.contains("the From day must not be after the To day"),
        "{}",
        p.html
    );
    let p = web
        .get("/console/audit?since=2026-12-02&until=2026-12-02")
        .await;
    assert_eq!(p.status, 200, "{}", p.html);
}

/// A campaign the API accepted whose page then cannot be read (here the user's request
/// limit, spent by the create) is said to be accepted, with a link to it, never shown as an
/// error that invites a second campaign (and a second debit).
/// A key made or rotated from the console is shown on the page that answers it even when
/// that page cannot read the list of keys just then (here: the tenant's request limit spent
/// by the create): it is shown this once, and an error page in its place would leave a
/// working key nobody has seen.
async fn a_new_or_rotated_key_is_shown_even_when_the_key_list_cannot_be_read(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/api-keys").await.csrf();
    let (s, keys) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    assert_eq!(s, 200, "{keys}");
    let first = keys["api_keys"][0]["id"].as_str().unwrap().to_owned();
    let limits = format!("/v1/platform/tenants/{}/limits", t.tenant_id);
    let set = |rate: u32, burst: u32| {
        let app = &app;
        let limits = limits.clone();
        async move {
            let (s, body) = call(
                app,
                "PUT",
                &limits,
                Some(kirim_tests::OPERATOR_TOKEN),
                Some(json!({"requests_per_sec": rate, "burst": burst})),
            )
            .await;
            assert_eq!(s, 200, "{body}");
        }
    };
    set(1, 1).await;
    // A full bucket of one request: the create's (the rotate's, below).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let made = web
        .post(
            "/console/api-keys",
            &[
                ("csrf", &csrf),
                ("name", "Integration"),
                ("role", "operator"),
            ],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.html);
    assert!(made.html.contains("id=\"new-key\""), "{}", made.html);
    assert!(made.html.contains("kirim_"), "the secret: {}", made.html);
    assert!(
        made.html.contains("could not be read just now"),
        "{}",
        made.html
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rotated = web
        .post(
            &format!("/console/api-keys/{first}/rotate"),
            &[("csrf", &csrf), ("grace_period_hours", "24")],
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.html);
    assert!(rotated.html.contains("id=\"new-key\""), "{}", rotated.html);
    set(100, 200).await;
    let (s, keys) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    assert_eq!(s, 200, "{keys}");
    assert_eq!(keys["api_keys"].as_array().map(Vec::len), Some(3), "{keys}");
}

async fn a_campaign_accepted_whose_page_cannot_be_read_is_said_accepted_not_failed(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let limits = format!("/v1/platform/tenants/{}/limits", t.tenant_id);
    let (s, body) = call(
        &app,
        "PUT",
        &limits,
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(json!({"requests_per_sec": 1, "burst": 1})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // A full bucket of one request: the create's.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-21"),
                ("numbers", "+60123450061\nnot-a-number"),
                ("idempotency_key", &kirim::domain::new_id()),
            ],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.html);
    assert!(
        made.html.contains("The campaign was accepted"),
        "{}",
        made.html
    );
    assert!(made.html.contains("campaign-link"), "{}", made.html);
    assert!(!made.html.contains("nothing was changed"), "{}", made.html);
    let (s, _) = call(
        &app,
        "PUT",
        &limits,
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(json!({"requests_per_sec": 100, "burst": 200})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, list) = call(&app, "GET", "/v1/broadcasts", Some(&t.key), None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(
        list["broadcasts"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
}

/// An operator names and schedules a campaign, finds it in the list and cancels it
/// (refunded); a second cancel is a move that does not apply.
async fn a_scheduled_campaign_is_named_listed_and_cancelled_from_the_console(b: Backend) {
    assert!(
        campaigns::NAME_AND_SEND_AT
            && campaigns::action_available(Role::Operator, "cancel")
            && campaigns::list_available(Role::Operator),
        "the campaigns API is merged: the console offers name, schedule, list and cancel"
    );
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let before = app.credits(&t.key).await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let at = (chrono::Utc::now() + chrono::Duration::minutes(30))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("name", "Year-end sale"),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-11"),
                ("numbers", "+60123450041\n+60123450042"),
                ("send_at", &at),
            ],
        )
        .await;
    let id = campaign_of(&made);
    let page = web.get(&format!("/console/campaigns/{id}")).await;
    assert!(
        page.html.contains(r#"id="campaign-status">scheduled<"#),
        "{}",
        page.html
    );
    assert!(
        page.html.contains(r#"id="campaign-waiting""#),
        "a scheduled campaign says why its counts are empty: {}",
        page.html
    );
    assert!(page.html.contains("Year-end sale") && page.html.contains(">Cancel campaign<"));
    let list = web.get("/console/campaigns").await;
    assert!(list.html.contains("Year-end sale"), "listed by name");
    // A read-only user's forged cancel is the API's to refuse: refused, and audited.
    let (viewer, _) = new_user(&app, &t.key, "read_only").await;
    let mut watcher = sign_in(&app, &viewer).await;
    let watcher_csrf = watcher.get("/console/campaigns").await.csrf();
    let refused = watcher
        .post(
            &format!("/console/campaigns/{id}/cancel"),
            &[("csrf", &watcher_csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.html);
    assert!(refused.html.contains("Your role does not allow this"));
    let (s, audit) = call(
        &app,
        "GET",
        "/v1/audit?action=POST%20/v1/broadcasts/%7Bid%7D/cancel",
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(s, 200, "{audit}");
    let events = audit["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{audit}");
    assert_eq!(events[0]["outcome"], "denied", "{audit}");
    // The cancel asks first and cancels nothing.
    let asked = web
        .post(
            &format!("/console/campaigns/{id}/cancel"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.html);
    assert!(
        asked.html.contains("Cancel the campaign “Year-end sale”?"),
        "{}",
        asked.html
    );
    let (_, view) = call(
        &app,
        "GET",
        &format!("/v1/broadcasts/{id}"),
        Some(&t.key),
        None,
    )
    .await;
    assert_ne!(view["status"], "cancelled", "not yet: {view}");
    let cancelled = web
        .post(
            &format!("/console/campaigns/{id}/cancel"),
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(cancelled.status, 303, "{}", cancelled.html);
    let view = broadcast_when(&app, &t.key, &id, |b| b["status"] == "cancelled").await;
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(
        app.credits_settled(&t.key, before).await,
        before,
        "refunded"
    );
    let again = web
        .post(
            &format!("/console/campaigns/{id}/cancel"),
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(
        again.status, 409,
        "a move that does not apply: {}",
        again.html
    );
}

/// A tenant whose numbers sit on two WABAs chooses the sender on the send and campaign
/// forms, the campaign's template picker offers the sender's WABA's catalogue, and the
/// templates page shows either catalogue.
async fn older_messages_keep_the_sender_chosen_above_the_send_form(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(60).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let waba = format!("{}", 6_000_000 + kirim_tests::rand_u32() % 900_000);
    let second = format!("{}", 3_000_000 + kirim_tests::rand_u32() % 900_000);
    let (s, body) = call(
        &app,
        "POST",
        &format!("/v1/platform/tenants/{}/phone-numbers", t.tenant_id),
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(json!({"phone_number_id": second, "waba_id": waba, "display_phone_number": "+1 555-010-2043"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    // More than one page of the list (50).
    for i in 0..51 {
        app.send_ok(&t.key, &format!("+6012345{:04}", 1000 + i))
            .await;
    }
    let mut web = sign_in(&app, &email).await;
    let page = web.get(&format!("/console/messages?from={second}")).await;
    assert_eq!(page.status, 200, "{}", page.html);
    let older = page
        .html
        .split("href=\"")
        .map(|h| {
            h.split('"')
                .next()
                .unwrap_or_default()
                .replace("&amp;", "&")
        })
        .find(|h| h.starts_with("/console/messages?") && h.contains("cursor="))
        .unwrap_or_else(|| panic!("no link to older messages: {}", page.html));
    assert!(older.contains(&format!("from={second}")), "{older}");
    let next = web.get(&older).await;
    assert_eq!(next.status, 200, "{}", next.html);
    assert!(next.html.contains(&format!(
        r#"<input type="hidden" name="from" value="{second}">"#
    )));
    assert!(next
        .html
        .contains(&format!("Sent from +1 555-010-2043 ({second}).")));
}

async fn with_numbers_on_two_wabas_the_console_chooses_the_sender_and_shows_its_catalogue(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let one = web.get("/console/messages").await;
    assert_eq!(one.status, 200, "{}", one.html);
    assert!(
        !one.html.contains(r#"name="from""#),
        "one number: no choice offered"
    );
    let campaigns = web.get("/console/campaigns").await;
    assert!(!campaigns.html.contains("campaign-sender"));

    let waba = format!("{}", 6_000_000 + kirim_tests::rand_u32() % 900_000);
    let second = format!("{}", 3_000_000 + kirim_tests::rand_u32() % 900_000);
    let (s, body) = call(
        &app,
        "POST",
        &format!("/v1/platform/tenants/{}/phone-numbers", t.tenant_id),
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(json!({"phone_number_id": second, "waba_id": waba, "display_phone_number": "+1 555-010-2040"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    // On the second number's WABA, Meta pauses order_update.
    app.sandbox_template(&waba, "order_update", "en_US", json!({"status": "paused"}))
        .await;

    // The send form offers both numbers, the default chosen; a send from the second goes
    // from it.
    let page = web.get("/console/messages").await;
    assert!(
        page.html.contains(&format!(
            r#"<option value="{}" selected>"#,
            t.phone_number_id
        )),
        "{}",
        page.html
    );
    assert!(page.html.contains(&format!(
        r#"<option value="{second}">+1 555-010-2040 ({second})</option>"#
    )));
    let sent = web
        .post(
            "/console/messages",
            &[
                ("csrf", &page.csrf()),
                ("idempotency_key", &kirim::domain::new_id()),
                ("from", &second),
                ("to", "+60123450031"),
                ("template", "promo_sale"),
                ("language", "en_US"),
                ("category", ""),
                ("parameters", "RAYA20"),
            ],
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.html);
    let id = sent
        .location()
        .strip_prefix("/console/messages/")
        .and_then(|r| r.split('?').next())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(app.message(&t.key, &id).await["from"], second.as_str());

    // The campaign picker: the default number's catalogue, until the second is chosen.
    let default = web.get("/console/campaigns").await;
    assert!(default.html.contains("campaign-sender"), "{}", default.html);
    assert!(default.html.contains(r#"value="order_update:en_US""#));
    let chosen = web.get(&format!("/console/campaigns?from={second}")).await;
    assert_eq!(chosen.status, 200, "{}", chosen.html);
    assert!(
        !chosen.html.contains(r#"value="order_update:en_US""#),
        "paused on the second number's WABA: {}",
        chosen.html
    );
    assert!(chosen.html.contains(r#"value="promo_sale:en_US""#));
    assert!(chosen.html.contains(&format!(
        r#"<input type="hidden" name="from" value="{second}">"#
    )));
    assert!(chosen
        .html
        .contains(&format!("Sent from +1 555-010-2040 ({second}).")));
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &chosen.csrf()),
                ("from", &second),
                ("template", "promo_sale:en_US"),
                ("parameters", "RAYA20"),
                ("numbers", "+60123450032"),
            ],
        )
        .await;
    let campaign = campaign_of(&made);
    let settled = broadcast_when(&app, &t.key, &campaign, |b| b["counts"]["read"] == 1).await;
    assert_eq!(settled["counts"]["read"], 1, "{settled}");
    let requests = app.sandbox_requests_to("60123450032");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].phone_number_id, second);
    // A template the sender's WABA has paused is refused, as typed.
    let refused = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &chosen.csrf()),
                ("from", &second),
                ("template", "order_update:en_US"),
                ("parameters", "A-1"),
                ("numbers", "+60123450033"),
            ],
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.html);
    assert!(refused.html.contains(&format!(
        r#"<input type="hidden" name="from" value="{second}">"#
    )));

    // The templates page shows either WABA's catalogue.
    let list = web.get("/console/templates?status=approved").await;
    assert!(list.html.contains(r#"id="t-waba""#), "{}", list.html);
    assert!(list.html.contains("order_update"));
    let other = web
        .get(&format!(
            "/console/templates?status=approved&waba_id={waba}"
        ))
        .await;
    assert_eq!(other.status, 200, "{}", other.html);
    assert!(!other.html.contains("order_update"), "{}", other.html);
    assert!(other.html.contains("promo_sale"));
    assert!(other
        .html
        .contains(&format!(r#"<option value="{waba}" selected>"#)));
}

/// The audit log says who did what: a user by email, a key by name (the raw id beside
/// it), and each event's details.
async fn the_audit_log_names_its_actors_and_shows_each_events_details(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &admin).await;
    let csrf = web.get("/console/api-keys").await.csrf();
    let made = web
        .post(
            "/console/api-keys",
            &[("csrf", &csrf), ("name", "audit-ci"), ("role", "operator")],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.html);
    let page = web.get("/console/audit").await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html
            .contains(&format!("user {}", admin.to_lowercase())),
        "{}",
        page.html
    );
    assert!(
        page.html.contains("key “initial admin key”"),
        "{}",
        page.html
    );
    assert!(page.html.contains("status: 201"), "{}", page.html);
}

/// A message's and a campaign's pages name the number they went from as the dashboard
/// names numbers (its display number and id), the messages list too once the account has
/// several; a number removed since is its id and "(removed)".
async fn the_message_and_campaign_pages_name_the_number_they_went_from_and_a_removed_one_as_removed(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(20).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let waba = format!("{}", 6_000_000 + kirim_tests::rand_u32() % 900_000);
    let second = format!("{}", 3_000_000 + kirim_tests::rand_u32() % 900_000);
    let (s, body) = call(
        &app,
        "POST",
        &format!("/v1/platform/tenants/{}/phone-numbers", t.tenant_id),
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(json!({"phone_number_id": second, "waba_id": waba, "display_phone_number": "+60 12-345 6789"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let template = json!({"name": "order_update", "language": "en_US",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]});
    let (s, sent) = call(
        &app,
        "POST",
        "/v1/messages",
        Some(&t.key),
        Some(json!({"to": "+60123450081", "from": second, "template": template})),
    )
    .await;
    assert_eq!(s, 202, "{sent}");
    let message = sent["id"].as_str().unwrap_or_default().to_owned();
    let from_default = app.send_ok(&t.key, "+60123450082").await;
    let (s, made) = call(
        &app,
        "POST",
        "/v1/broadcasts",
        Some(&t.key),
        Some(json!({"from": second, "template": template, "recipients": ["+60123450083"]})),
    )
    .await;
    assert_eq!(s, 202, "{made}");
    let campaign = made["id"].as_str().unwrap_or_default().to_owned();

    let mut web = sign_in(&app, &email).await;
    let label = format!("+60 12-345 6789 ({second})");
    let page = web.get(&format!("/console/messages/{message}")).await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html
            .contains(&format!(r#"<dd id="message-from">{label}</dd>"#)),
        "{}",
        page.html
    );
    // The default number: its display number (the sandbox's, learnt from Meta) and id.
    let page = web.get(&format!("/console/messages/{from_default}")).await;
    let default = page
        .html
        .split(r#"<dd id="message-from">"#)
        .nth(1)
        .and_then(|r| r.split("</dd>").next())
        .unwrap_or_default();
    assert!(
        default.ends_with(&format!("({})", t.phone_number_id)),
        "{}",
        page.html
    );
    let page = web.get(&format!("/console/campaigns/{campaign}")).await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html
            .contains(&format!(r#"<dd id="campaign-from">{label}</dd>"#)),
        "{}",
        page.html
    );
    // Two numbers: the list has a "From" column.
    let list = web.get("/console/messages").await;
    assert!(
        list.html
            .contains(&format!(r#"<td data-label="From">{label}</td>"#)),
        "{}",
        list.html
    );

    // The number removed: its id, said removed.
    let (s, _) = call(
        &app,
        "DELETE",
        &format!(
            "/v1/platform/tenants/{}/phone-numbers/{second}",
            t.tenant_id
        ),
        Some(kirim_tests::OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let removed = format!("{second} (removed)");
    let page = web.get(&format!("/console/messages/{message}")).await;
    assert!(
        page.html
            .contains(&format!(r#"<dd id="message-from">{removed}</dd>"#)),
        "{}",
        page.html
    );
    let page = web.get(&format!("/console/campaigns/{campaign}")).await;
    assert!(
        page.html
            .contains(&format!(r#"<dd id="campaign-from">{removed}</dd>"#)),
        "{}",
        page.html
    );
    // One number again, but a message from the removed one: the column stays.
    let list = web.get("/console/messages").await;
    assert!(
        list.html
            .contains(&format!(r#"<td data-label="From">{removed}</td>"#)),
        "{}",
        list.html
    );
}

/// The users page offers an admin "Reset 2FA" on the rows of users with 2FA (pending or
/// on), never on their own row; it asks first, naming the user, then the user signs in with
/// their password alone. Operators and read-only users are refused, never asked.
async fn an_admin_resets_a_users_2fa_from_the_users_page_after_a_confirmation(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (admin, admin_id) = new_user(&app, &t.key, "admin").await;
    let (lost, id) = new_user(&app, &t.key, "operator").await;
    let (reader, reader_id) = new_user(&app, &t.key, "read_only").await;
    turn_on_2fa(&app, &super::users::login_ok(&app, &lost).await).await;
    // The admin's own enrolment is pending: 2FA, but no code asked at sign-in.
    let own = super::users::login_ok(&app, &admin).await;
    let (s, _) = call(&app, "POST", "/v1/auth/2fa/enroll", Some(&own), None).await;
    assert_eq!(s, 200);
    let signs_in = |email: String| {
        let app = &app;
        async move {
            let body = json!({"email": email, "password": PASSWORD});
            call(app, "POST", "/v1/auth/login", None, Some(body))
                .await
                .0
        }
    };
    assert_eq!(signs_in(lost.clone()).await, 401, "a code is asked");

    let mut web = sign_in(&app, &admin).await;
    let users = web.get("/console/users").await;
    let reset = |id: &str| format!("/console/users/{id}/reset-2fa");
    assert!(users.html.contains(&reset(&id)), "{}", users.html);
    assert!(
        !users.html.contains(&reset(&admin_id)),
        "not on one's own row"
    );
    assert!(!users.html.contains(&reset(&reader_id)), "not without 2FA");
    let csrf = users.csrf();
    let no_csrf = web.post(&reset(&id), &[("email", &lost)]).await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.html);
    let asked = web
        .post(&reset(&id), &[("csrf", &csrf), ("email", &lost)])
        .await;
    assert_eq!(asked.status, 200, "{}", asked.html);
    assert!(asked.html.contains(r#"name="confirm""#), "{}", asked.html);
    assert!(asked.html.contains(&lost), "names the user: {}", asked.html);
    assert_eq!(
        signs_in(lost.clone()).await,
        401,
        "nothing done before confirming"
    );
    let done = web
        .post(
            &reset(&id),
            &[("csrf", &csrf), ("email", &lost), ("confirm", "yes")],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.html);
    assert_eq!(done.location(), "/console/users?done=two_factor_reset");
    let page = web.get(done.location()).await;
    assert!(
        page.html.contains("two-factor authentication is off"),
        "{}",
        page.html
    );
    assert!(!page.html.contains(&reset(&id)), "{}", page.html);
    assert_eq!(signs_in(lost.clone()).await, 200, "the password alone");
    // One's own, sent anyway: refused, said on the users page.
    let mine = web
        .post(&reset(&admin_id), &[("csrf", &csrf), ("confirm", "yes")])
        .await;
    assert_eq!(mine.status, 409, "{}", mine.html);
    assert!(mine.html.contains("another admin can"), "{}", mine.html);
    // An operator and a read-only user: refused at once, not asked to confirm.
    for email in [&lost, &reader] {
        let mut other = sign_in(&app, email).await;
        let csrf = other.get("/console/").await.csrf();
        let page = other
            .post(&reset(&admin_id), &[("csrf", &csrf), ("email", &admin)])
            .await;
        assert_eq!(page.status, 403, "{email}: {}", page.html);
        assert!(!page.html.contains(r#"name="confirm""#), "{}", page.html);
    }
    let (_, list) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    let of = |id: &str| {
        list["users"]
            .as_array()
            .and_then(|l| l.iter().find(|u| u["id"] == id))
            .map(|u| u["two_factor"].clone())
    };
    assert_eq!(of(&admin_id), Some(json!("pending")), "{list}");
    assert_eq!(of(&id), Some(json!("none")), "{list}");
}

on_both_backends!(
    an_admin_resets_a_users_2fa_from_the_users_page_after_a_confirmation,
    the_audit_log_names_its_actors_and_shows_each_events_details,
    a_sign_out_the_console_cannot_check_still_forgets_the_session_in_the_browser,
    a_sign_out_posted_without_the_session_cookie_clears_no_cookie,
    a_sign_in_made_before_its_user_turned_on_2fa_elsewhere_is_told_to_sign_in_again,
    a_campaign_accepted_whose_page_cannot_be_read_is_said_accepted_not_failed,
    a_new_or_rotated_key_is_shown_even_when_the_key_list_cannot_be_read,
    a_user_changes_their_password_from_the_console_and_signs_in_again_with_it,
    with_numbers_on_two_wabas_the_console_chooses_the_sender_and_shows_its_catalogue,
    a_day_the_calendar_cannot_end_is_a_400_on_every_dated_page,
    a_campaign_s_failures_are_retried_from_its_page_with_the_template_s_parameters,
    a_retry_refused_for_a_held_number_says_why_on_the_campaign_s_page,
    a_scheduled_campaign_is_named_listed_and_cancelled_from_the_console,
    the_templates_page_lists_the_catalogue_and_only_an_admin_may_sync_it,
    an_operator_creates_a_campaign_from_pasted_numbers_and_sees_its_results_and_failures,
    a_campaign_is_created_from_an_uploaded_csv_file,
    the_campaign_form_refuses_a_post_without_its_csrf_token_and_a_read_only_user,
    a_failed_message_shows_what_its_failure_means_and_what_to_do,
    an_admin_unlocks_a_user_from_the_users_page,
    the_users_page_offers_to_clear_failed_sign_ins_without_calling_anyone_locked,
    the_send_forms_suggestions_carry_each_templates_language_and_follow_the_sender,
    an_admin_changes_a_users_role_from_the_users_page_but_not_their_own,
    the_send_form_takes_the_catalogues_category_and_keeps_a_refused_form_as_typed,
    a_console_admin_cannot_remove_themselves_but_another_admin_can,
    pasted_numbers_may_be_written_as_people_write_them_and_the_invalid_ones_are_named,
    a_csv_of_long_cells_within_the_forms_limits_makes_its_campaign,
    the_two_factor_page_offers_set_up_only_to_a_user_without_it,
    an_admin_who_requires_2fa_without_it_is_told_why_the_2fa_page_is_all_there_is,
    a_role_that_may_not_act_is_refused_at_once_not_asked_to_confirm_or_mend,
    a_resumed_scheduled_campaign_is_said_to_wait_for_its_send_time,
    usage_and_phone_numbers_show_what_the_api_has_and_say_so_when_it_has_not,
    a_refused_usage_range_shows_only_its_refusal_in_the_forms_words,
    a_held_number_is_shown_and_an_admin_resumes_it_from_the_dashboard,
    a_closed_tenants_user_is_signed_out_not_sent_round_in_circles,
    a_double_submitted_campaign_form_makes_one_campaign_and_one_debit,
    the_pages_say_what_is_so_a_suspension_every_status_and_no_password_to_fill,
    older_messages_keep_the_sender_chosen_above_the_send_form,
    the_message_and_campaign_pages_name_the_number_they_went_from_and_a_removed_one_as_removed,
);
