//! The console's campaign pages as an acceptance run drove them (local mode, both
//! backends): what a page offers matches what the API would do, its notices say what is
//! true when it is shown, and refusals say what is wrong in the page's own words.

use kirim::config::Backend;
use kirim_infra::local::LocalClock;
use kirim_tests::{local_config, spawn_app, ManualClock};

use super::access::call;
use super::console::{sign_in, Browser, Page};
use super::console_pages::{broadcast_when, campaign_of};
use super::users::new_user;

/// The text of the page's first notice (`<p class="notice ...">`), or "".
fn notice(p: &Page) -> String {
    let Some(at) = p.html.find(r#"<p class="notice"#) else {
        return String::new();
    };
    let rest = &p.html[at..];
    let end = rest.find("</p>").unwrap_or(rest.len());
    rest[..end].to_owned()
}

async fn a_campaign_whose_failures_no_later_try_may_fix_offers_no_retry(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    // A recipient ending 0007: Meta's 132001 (the template does not exist), which no later
    // try fixes.
    let made = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-1"),
                ("numbers", "+60123450007"),
            ],
        )
        .await;
    let id = campaign_of(&made);
    let settled = broadcast_when(&app, &t.key, &id, |b| {
        b["counts"]["failed"] == 1 && b["status"] == "completed"
    })
    .await;
    assert_eq!(settled["status"], "completed", "{settled}");
    let page = web.get(&format!("/console/campaigns/{id}")).await;
    assert!(
        page.html.contains("132001"),
        "its failure is listed: {}",
        page.html
    );
    assert!(
        !page.html.contains("Retry failed messages"),
        "nothing a retry may fix, so no retry offered: {}",
        page.html
    );
    // A form posted all the same (an old page): the API's refusal, in a campaign's words.
    let refused = web
        .post(
            &format!("/console/campaigns/{id}/retry-failed"),
            &[("csrf", &page.csrf()), ("parameters", "ORDER-1")],
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.html);
    let said = notice(&refused);
    assert!(
        said.contains("no message of this campaign failed for a reason a later try may fix"),
        "{said}"
    );
    assert!(!said.contains("broadcast"), "{said}");
}

async fn a_cancel_names_its_campaign_as_read_by_id_and_says_the_refunds_are_under_way(b: Backend) {
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
                ("name", "Year-end sale"),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-2"),
                ("numbers", "+60123450051"),
                ("send_at", &at),
            ],
        )
        .await;
    let id = campaign_of(&made);
    // The confirmation names the campaign as its id reads, not as a posted field says.
    let asked = web
        .post(
            &format!("/console/campaigns/{id}/cancel"),
            &[("csrf", &csrf), ("name", "Something else")],
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.html);
    assert!(
        asked.html.contains("Cancel the campaign “Year-end sale”?"),
        "{}",
        asked.html
    );
    assert!(asked.html.contains(&id), "its id: {}", asked.html);
    assert!(!asked.html.contains("Something else"), "{}", asked.html);
    // Another tenant's campaign: not there, no confirmation to act on.
    let other = app.onboard(5).await;
    let (stranger, _) = new_user(&app, &other.key, "operator").await;
    let mut elsewhere = sign_in(&app, &stranger).await;
    let their_csrf = elsewhere.get("/console/campaigns").await.csrf();
    let hidden = elsewhere
        .post(
            &format!("/console/campaigns/{id}/cancel"),
            &[("csrf", &their_csrf)],
        )
        .await;
    assert_eq!(hidden.status, 404, "{}", hidden.html);
    // Cancelled: the notice says what is true at once (the refunds of a sending campaign
    // run after the answer), not that they are all done.
    let cancelled = web
        .post(
            &format!("/console/campaigns/{id}/cancel"),
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(cancelled.status, 303, "{}", cancelled.html);
    let page = web.get(cancelled.location()).await;
    let said = notice(&page);
    assert!(said.contains("being cancelled and refunded"), "{said}");
    assert!(!said.contains("were refunded"), "{said}");
}

async fn a_form_sent_after_the_session_ended_is_said_not_done_on_the_sign_in_page(b: Backend) {
    let clock = ManualClock::new();
    let mut cfg = local_config(b).await;
    cfg.clock = LocalClock(clock.clone());
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let before = app.credits(&t.key).await;
    clock.advance(chrono::Duration::minutes(31));
    let sent = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-3"),
                ("numbers", "+60123450061"),
            ],
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.html);
    // A fixed flag: nothing of the form, no page to return to.
    assert_eq!(sent.location(), "/console/login?ended=1");
    let login = web.get(sent.location()).await;
    assert_eq!(login.status, 200, "{}", login.html);
    let said = notice(&login);
    assert!(said.contains("Your session has ended"), "{said}");
    assert!(said.contains("it was not done"), "{said}");
    assert!(
        login.html.contains(r#"name="password""#),
        "the sign-in form"
    );
    assert_eq!(app.credits(&t.key).await, before, "nothing was sent");
    // A browser that was never signed in gets the plain sign-in page.
    let mut fresh = Browser::new(&app);
    let plain = fresh.get("/console/campaigns").await;
    assert_eq!(plain.location(), "/console/login");
    // Only the flag shows the notice: whatever else is in the query is not echoed.
    let odd = fresh
        .get("/console/login?ended=https%3A%2F%2Fevil.example%2F")
        .await;
    assert_eq!(odd.status, 200);
    assert!(notice(&odd).is_empty(), "{}", odd.html);
    assert!(!odd.html.contains("evil.example"), "{}", odd.html);
}

async fn an_upload_that_is_no_csv_text_is_said_so_and_one_too_large_keeps_the_form(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("name", "Spring promo"),
        ("template", "promo_sale:en_US"),
        ("parameters", "SPRING-25"),
        ("numbers", ""),
    ];
    let before = app.credits(&t.key).await;
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
    let xlsx = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00[Content_Types].xml".to_vec();
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(
            "phone\r\n+60123450071\r\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    // Bytes that are no text (no NUL among them, a first line that is no UTF-8).
    let noise: Vec<u8> = (0..600u32)
        .map(|i| 0x80 + ((i * 37 + 11) % 0x7f) as u8)
        .collect();
    for (file, bytes, says) in [
        ("photo.csv", png, "the file is not CSV text"),
        ("list.csv", xlsx, "Excel workbook (.xlsx)"),
        ("list.csv", utf16, "UTF-16"),
        ("list.csv", noise, "not UTF-8 text"),
    ] {
        let refused = web
            .post_multipart("/console/campaigns", &fields, &[("file", file, &bytes)])
            .await;
        assert_eq!(refused.status, 400, "{}", refused.html);
        let said = notice(&refused);
        assert!(said.contains(says), "{says}: {said}");
        assert!(!said.contains("needs a"), "{says}: {said}");
    }
    // A CSV without its column: said without the API's backticks.
    let no_phone = web
        .post_multipart(
            "/console/campaigns",
            &fields,
            &[("file", "list.csv", b"name,number\nA,+60123450072\n")],
        )
        .await;
    let said = notice(&no_phone);
    assert!(
        said.contains("the CSV needs a column named phone"),
        "{said}"
    );
    assert!(!said.contains('`'), "{said}");
    // Over 2 MiB: the form comes back with its template, parameters and name, and says so.
    let mut big = b"phone,notes\n".to_vec();
    while big.len() <= kirim::console::campaigns::UPLOAD_LIMIT {
        big.extend_from_slice(b"+60123450073,a long note nobody needs for sending\n");
    }
    let large = web
        .post_multipart("/console/campaigns", &fields, &[("file", "list.csv", &big)])
        .await;
    assert_eq!(large.status, 413, "{}", large.html);
    assert!(
        notice(&large).contains("larger than 2 MiB"),
        "{}",
        large.html
    );
    assert!(
        large.html.contains(r#"id="new-campaign""#),
        "the form again: {}",
        large.html
    );
    assert!(
        large
            .html
            .contains(r#"<option value="promo_sale:en_US" selected>"#),
        "{}",
        large.html
    );
    assert!(large.html.contains("SPRING-25"), "{}", large.html);
    assert!(
        large.html.contains(r#"value="Spring promo""#),
        "{}",
        large.html
    );
    assert_eq!(app.credits(&t.key).await, before, "nothing was sent");
}

async fn the_apis_refusals_read_in_the_campaign_forms_words(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let soon = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let past = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-4"),
                ("numbers", "+60123450081"),
                ("send_at", &soon),
            ],
        )
        .await;
    assert_eq!(past.status, 400, "{}", past.html);
    let said = notice(&past);
    assert!(
        said.contains("the send time must be at least 1 minute in the future"),
        "{said}"
    );
    assert!(!said.contains("send_at"), "{said}");
    // One parameter is one parameter (the API's own words, fixed at the source).
    let bare = web
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("template", "order_update:en_US"),
                ("numbers", "+60123450081"),
            ],
        )
        .await;
    assert_eq!(bare.status, 422, "{}", bare.html);
    let said = notice(&bare);
    assert!(
        said.contains("takes 1 body parameter; the request gives 0"),
        "{said}"
    );
    let (s, body) = call(
        &app,
        "POST",
        "/v1/broadcasts",
        Some(&t.key),
        Some(serde_json::json!({
            "template": {"name": "order_update", "language": "en_US"},
            "recipients": ["+60123450082"],
        })),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(
        body["error"]["message"],
        "template order_update/en_US takes 1 body parameter; the request gives 0"
    );
}

async fn a_status_filter_the_api_refuses_shows_every_campaign_and_says_so(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let (operator, _) = new_user(&app, &t.key, "operator").await;
    let mut op = sign_in(&app, &operator).await;
    let csrf = op.get("/console/campaigns").await.csrf();
    let made = op
        .post(
            "/console/campaigns",
            &[
                ("csrf", &csrf),
                ("name", "Listed anyway"),
                ("template", "order_update:en_US"),
                ("parameters", "ORDER-5"),
                ("numbers", "+60123450091"),
            ],
        )
        .await;
    campaign_of(&made);
    let mut web = sign_in(&app, &email).await;
    let page = web.get("/console/campaigns?status=bogus").await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        notice(&page).contains(
            "Not filtered: status must be scheduled, sending, paused, completed or cancelled. \
             All campaigns are shown."
        ),
        "{}",
        page.html
    );
    assert!(
        page.html.contains(r#"id="campaigns""#),
        "the list: {}",
        page.html
    );
    assert!(page.html.contains("Listed anyway"), "{}", page.html);
    assert!(
        page.html.contains(r#"id="c-status""#),
        "its filter: {}",
        page.html
    );
    assert!(
        page.html
            .contains(r#"<option value="" selected>Any</option>"#),
        "{}",
        page.html
    );
    // Said at the top, where every notice is: above the form, not below it by the list.
    let page = op.get("/console/campaigns?status=bogus").await;
    let (said, form) = (
        page.html.find("Not filtered:"),
        page.html.find(r#"id="new-campaign""#),
    );
    assert!(
        matches!((said, form), (Some(s), Some(f)) if s < f),
        "{}",
        page.html
    );
}

async fn a_new_campaign_form_offers_a_marketing_or_utility_template_first(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (operator, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &operator).await;
    let form = web.get("/console/campaigns").await;
    // login_code (authentication) is first by name; order_update (utility) is chosen.
    assert!(form.html.contains("login_code:en_US"), "{}", form.html);
    assert!(
        form.html
            .contains(r#"<option value="order_update:en_US" selected>"#),
        "{}",
        form.html
    );
    assert!(!form.html.contains(r#"value="login_code:en_US" selected"#));
}

async fn an_empty_opt_out_list_spans_its_columns_and_sign_out_stays_on_one_line(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (operator, _) = new_user(&app, &t.key, "operator").await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &operator).await;
    // An empty opt-out list spans the columns its table has: 5, or 6 with "Action".
    let empty = web.get("/console/opt-outs").await;
    assert!(
        empty.html.contains(r#"<td colspan="5">No opt-outs."#),
        "{}",
        empty.html
    );
    let mut boss = sign_in(&app, &admin).await;
    let empty = boss.get("/console/opt-outs").await;
    assert!(
        empty.html.contains(r#"<td colspan="6">No opt-outs."#),
        "{}",
        empty.html
    );
    // "Sign out" stays on one line at 375 px.
    let css = web.get("/console/assets/console.css").await;
    assert!(
        css.html.contains(".signout button { white-space: nowrap;"),
        "{}",
        css.html
    );
}

on_both_backends!(
    a_campaign_whose_failures_no_later_try_may_fix_offers_no_retry,
    a_cancel_names_its_campaign_as_read_by_id_and_says_the_refunds_are_under_way,
    a_form_sent_after_the_session_ended_is_said_not_done_on_the_sign_in_page,
    an_upload_that_is_no_csv_text_is_said_so_and_one_too_large_keeps_the_form,
    the_apis_refusals_read_in_the_campaign_forms_words,
    a_status_filter_the_api_refuses_shows_every_campaign_and_says_so,
    a_new_campaign_form_offers_a_marketing_or_utility_template_first,
    an_empty_opt_out_list_spans_its_columns_and_sign_out_stays_on_one_line,
);
