//! The console in a real browser (Chromium through WebDriver) against local mode: sign
//! in with a TOTP code, send a message from the form, create and revoke an API key,
//! sign out; sync the template catalogue, create a campaign from pasted numbers and see
//! its failures with hints, find a failed message by number and see its hint, a forged
//! campaign POST refused; an admin unlocks a user, a read-only user sees no Sync button. `KIRIM_TEST_WEBDRIVER_URL` names the WebDriver (`scripts/test` starts
//! chromedriver and sets it). Without it the test is skipped loudly, except in CI
//! (`CI=true`), where it fails.
//!
//! With `KIRIM_CONSOLE_SCREENSHOTS=<dir>` it also writes screenshots of the main pages,
//! desktop and 375 px wide (`scripts/console-screenshots`).

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use kirim::config::Backend;
use kirim_tests::{spawn_app, TestApp};
use serde_json::json;

use super::access::call;
use super::console::totp_of;
use super::users::{new_user, PASSWORD};

/// The password the first browser test changes to.
const NEW_PASSWORD: &str = "a new and longer passphrase";

fn webdriver_url() -> Option<String> {
    match std::env::var("KIRIM_TEST_WEBDRIVER_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but KIRIM_TEST_WEBDRIVER_URL is not set: the browser tests must run in CI"
            );
            eprintln!(
                "\n!!! SKIPPED: console browser test (set KIRIM_TEST_WEBDRIVER_URL to a \
                 chromedriver, or run scripts/test, which starts one) !!!\n"
            );
            None
        }
    }
}

/// One Chromium at a time: the browser tests take turns, so that they do not starve the
/// suite's timing-sensitive tests (throughput) of the machine's two cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn browser(url: &str) -> (Client, tokio::sync::MutexGuard<'static, ()>) {
    let turn = ONE_BROWSER.lock().await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    // rustls is built with two providers here (the AWS SDK's and reqwest's): pick one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let c = ClientBuilder::rustls()
        .expect("a WebDriver client")
        .capabilities(caps)
        .connect(url)
        .await
        .expect("a WebDriver session");
    (c, turn)
}

/// Waits for an element (pages load synchronously; this only absorbs navigation).
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} on the page: {e}"))
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = find(c, css).await;
    e.clear().await.ok();
    e.send_keys(value).await.expect("typed");
}

/// Clicks an element; one that went stale between finding and clicking (the page was
/// still being replaced) is found again.
async fn click(c: &Client, css: &str) {
    for _ in 0..5 {
        match find(c, css).await.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("clicked {css}: {e}"),
        }
    }
    panic!("{css} kept going stale");
}

/// Clicks something that loads a new page and waits until the old page is gone, so that
/// the next lookup cannot find an element of the page being left.
async fn click_and_wait_for_page(c: &Client, css: &str) {
    let old = find(c, "html").await;
    click(c, css).await;
    for _ in 0..100 {
        if old.tag_name().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("clicking {css} did not load a new page");
}

async fn path(c: &Client) -> String {
    c.current_url()
        .await
        .map(|u| u.path().to_owned())
        .unwrap_or_default()
}

async fn screenshot(c: &Client, name: &str) {
    let Ok(dir) = std::env::var("KIRIM_CONSOLE_SCREENSHOTS") else {
        return;
    };
    for (label, width) in [("desktop", 1280u32), ("375px", 375)] {
        c.set_window_size(width, 1000).await.expect("resize");
        let png = c.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(format!("{dir}/{name}-{label}.png"), png).expect("written");
    }
    c.set_window_size(1280, 1000).await.expect("resize");
}

async fn sign_in_form(c: &Client, app: &TestApp, email: &str) {
    c.goto(&app.url("/console/login"))
        .await
        .expect("login page");
    fill(c, "#email", email).await;
    fill(c, "#password", PASSWORD).await;
    click(c, "form button[type=submit]").await;
}

#[tokio::test]
async fn in_a_browser_a_user_signs_in_with_totp_sends_a_message_manages_a_key_and_signs_out() {
    let Some(url) = webdriver_url() else {
        return;
    };
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let (c, _turn) = browser(&url).await;

    // Sign in with the password, then enrol 2FA from the page.
    c.goto(&app.url("/console/login"))
        .await
        .expect("login page");
    screenshot(&c, "sign-in").await;
    sign_in_form(&c, &app, &email).await;
    find(&c, "#credits").await;
    assert_eq!(path(&c).await, "/console/");
    click(&c, "a[href='/console/2fa']").await;
    click(&c, "main form button[type=submit]").await;
    let secret = find(&c, "#totp-secret").await.text().await.expect("secret");
    find(&c, ".qr svg").await;
    screenshot(&c, "two-factor").await;
    // A wrong code: the same QR code and key stay on the page, and the next code confirms.
    fill(&c, "#totp_code", "000000").await;
    click_and_wait_for_page(&c, "main form button[type=submit]").await;
    let said = find(&c, ".notice.problem")
        .await
        .text()
        .await
        .expect("notice");
    assert!(said.contains("that code didn't match"), "{said}");
    find(&c, ".qr svg").await;
    let again = find(&c, "#totp-secret").await.text().await.expect("secret");
    assert_eq!(again.trim(), secret.trim(), "the same key");
    screenshot(&c, "two-factor-wrong-code").await;
    let totp = totp_of(secret.trim());
    let now = chrono::Utc::now().timestamp() as u64;
    fill(&c, "#totp_code", &totp.generate(now)).await;
    click(&c, "main form button[type=submit]").await;
    find(&c, ".notice.done").await;

    // Change the password on the same page: every session of the user ends, this one
    // too; back at the sign-in page, the old password is refused and the new one, then
    // the code, signs in.
    c.goto(&app.url("/console/2fa")).await.expect("the page");
    find(&c, "#change-password").await;
    screenshot(&c, "password").await;
    fill(&c, "#current_password", PASSWORD).await;
    fill(&c, "#new_password", NEW_PASSWORD).await;
    click(&c, "#change-password button[type=submit]").await;
    let notice = find(&c, ".notice.done").await.text().await.expect("notice");
    assert!(notice.contains("password was changed"), "{notice}");
    assert_eq!(path(&c).await, "/console/login");
    let (s, _) = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(s, 401, "the old password no longer signs in");
    fill(&c, "#email", &email).await;
    fill(&c, "#password", NEW_PASSWORD).await;
    click(&c, "form button[type=submit]").await;
    fill(&c, "#totp_code", &totp.generate(now + 30)).await;
    click(&c, "form button[type=submit]").await;
    find(&c, "#credits").await;

    // Send a message from the form: it goes through the API's send.
    click(&c, "a[href='/console/messages']").await;
    fill(&c, "#to", "+60123456789").await;
    fill(&c, "#template", "order_update").await;
    fill(&c, "#parameters", "ORDER-42").await;
    click(&c, "form.stack button[type=submit]").await;
    let status = find(&c, "#message-status")
        .await
        .text()
        .await
        .expect("status");
    assert!(
        ["accepted", "sending", "sent", "delivered", "read"].contains(&status.trim()),
        "{status}"
    );
    let (_, list) = call(&app, "GET", "/v1/messages", Some(&t.key), None).await;
    assert_eq!(list["messages"].as_array().map(Vec::len), Some(1));
    click(&c, "a[href='/console/messages']").await;
    screenshot(&c, "messages").await;

    // Create a key (shown once), then revoke it.
    click(&c, "a[href='/console/api-keys']").await;
    fill(&c, "#key-name", "browser key").await;
    click(&c, "form.stack button[type=submit]").await;
    let key = find(&c, "#new-key").await.text().await.expect("the key");
    let key = key.trim().to_owned();
    assert!(key.starts_with("kirim_"), "{key}");
    screenshot(&c, "api-keys").await;
    let (s, _) = call(&app, "GET", "/v1/account", Some(&key), None).await;
    assert_eq!(s, 200, "the new key works");
    // Revoking asks first: nothing is revoked until the confirmation's button.
    click_and_wait_for_page(&c, "button[aria-label='Revoke browser key']").await;
    let asked = c.source().await.unwrap_or_default();
    assert!(asked.contains("Revoke the key “browser key”?"), "{asked}");
    let (s, _) = call(&app, "GET", "/v1/account", Some(&key), None).await;
    assert_eq!(s, 200, "not revoked yet");
    click_and_wait_for_page(&c, "form:has(input[name=confirm]) button.danger").await;
    find(&c, "main:not(:has(#new-key)) .notice.done").await;
    let (s, _) = call(&app, "GET", "/v1/account", Some(&key), None).await;
    assert_eq!(s, 401, "the revoked key is refused");

    for (page, name) in [
        ("/console/", "dashboard"),
        ("/console/opt-outs", "opt-outs"),
        ("/console/users", "users"),
        ("/console/audit", "audit"),
        ("/console/settings", "settings"),
    ] {
        c.goto(&app.url(page)).await.expect("page");
        find(&c, "main h1").await;
        screenshot(&c, name).await;
        // Every list fits a 1280 px window: its ids and emails wrap rather than push the
        // last columns (the audit log's IP) past the page's edge.
        let fits = c
            .execute(
                "return [...document.querySelectorAll('.table-wrap')]\
                 .every(w => w.scrollWidth <= w.clientWidth);",
                vec![],
            )
            .await
            .expect("measured");
        assert_eq!(fits, json!(true), "{page}: a list wider than the page");
    }

    // Sign out: back at the sign-in page, and the console asks to sign in again.
    click(&c, ".signout button").await;
    find(&c, "#email").await;
    c.goto(&app.url("/console/")).await.expect("dashboard");
    find(&c, "#email").await;
    assert_eq!(path(&c).await, "/console/login");
    c.close().await.ok();
}

/// Reloads `url` until its page shows `text` (or a deadline passes; the check that
/// follows decides).
async fn reload_until(c: &Client, url: &str, text: &str) {
    for _ in 0..100 {
        c.goto(url).await.expect("page");
        if c.source().await.unwrap_or_default().contains(text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn in_a_browser_an_admin_syncs_templates_creates_a_campaign_and_sees_its_failures_with_hints()
{
    let Some(url) = webdriver_url() else {
        return;
    };
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let (c, _turn) = browser(&url).await;
    sign_in_form(&c, &app, &email).await;
    find(&c, "#credits").await;

    // The catalogue, and Sync with Meta.
    click(&c, "a[href='/console/templates']").await;
    let table = find(&c, "#templates").await.text().await.expect("table");
    for name in ["order_update", "promo_sale", "pending_notice"] {
        assert!(table.contains(name), "{name} in {table}");
    }
    click(&c, "#sync").await;
    let done = find(&c, ".notice.done").await.text().await.expect("notice");
    assert!(
        done.contains("Synced with Meta: 5 templates read"),
        "{done}"
    );
    screenshot(&c, "templates").await;

    // A campaign from pasted numbers: one delivered, one undeliverable (sandbox 0001).
    click(&c, "a[href='/console/campaigns']").await;
    click(&c, "#c-template option[value='order_update:en_US']").await;
    fill(&c, "#c-parameters", "ORDER-9").await;
    fill(&c, "#c-numbers", "+60123450011\n+60123450001").await;
    screenshot(&c, "campaigns").await;
    click(&c, "#new-campaign button[type=submit]").await;
    let accepted = find(&c, "#campaign-accepted")
        .await
        .text()
        .await
        .expect("n");
    assert_eq!(accepted.trim(), "2");
    let results = c.current_url().await.expect("url").to_string();
    reload_until(&c, &results, "131026").await;
    let failures = find(&c, "#campaign-failures")
        .await
        .text()
        .await
        .expect("rows");
    assert!(failures.contains("131026"), "{failures}");
    assert!(
        failures.contains("Check the number with the customer"),
        "{failures}"
    );
    find(&c, ".chart svg").await;
    screenshot(&c, "campaign").await;

    // The failed message itself, found by number, with its hint.
    click(&c, "a[href='/console/messages']").await;
    fill(&c, "#f-to", "+60123450001").await;
    click_and_wait_for_page(&c, "form.filters button[type=submit]").await;
    click(&c, "#messages tbody a").await;
    let hint = find(&c, "#message-hint").await.text().await.expect("hint");
    assert!(hint.contains("could not be delivered"), "{hint}");
    screenshot(&c, "message-failed").await;

    // A forged campaign POST (its CSRF field removed from the page) is refused.
    click(&c, "a[href='/console/campaigns']").await;
    fill(&c, "#c-numbers", "+60123450012").await;
    fill(&c, "#c-parameters", "ORDER-10").await;
    c.execute(
        "document.querySelector('#new-campaign input[name=csrf]').remove()",
        vec![],
    )
    .await
    .expect("the token removed");
    click(&c, "#new-campaign button[type=submit]").await;
    // Refused in the signed-in frame: the navigation is still there.
    let refused = find(&c, "#error-text").await.text().await.expect("text");
    find(&c, "nav a[href='/console/campaigns']").await;
    assert!(
        refused.contains("did not come from the console"),
        "{refused}"
    );
    let (_, list) = call(&app, "GET", "/v1/messages?limit=100", Some(&t.key), None).await;
    assert_eq!(
        list["messages"].as_array().map(Vec::len),
        Some(2),
        "no third message"
    );
    c.close().await.ok();
}

#[tokio::test]
async fn in_a_browser_an_admin_unlocks_a_user_and_a_read_only_user_sees_no_sync_button() {
    let Some(url) = webdriver_url() else {
        return;
    };
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(10).await;
    let (admin, _) = new_user(&app, &t.key, "admin").await;
    let (reader, _) = new_user(&app, &t.key, "read_only").await;
    let login = |password: &'static str| {
        let email = reader.clone();
        let app = &app;
        async move {
            let body = json!({"email": email, "password": password});
            call(app, "POST", "/v1/auth/login", None, Some(body))
                .await
                .0
        }
    };
    let mut slowed = false;
    for _ in 0..20 {
        if login("not the password").await == 429 {
            slowed = true;
            break;
        }
    }
    assert!(slowed, "the reader is slowed after failures");

    let (c, _turn) = browser(&url).await;
    sign_in_form(&c, &app, &admin).await;
    find(&c, "#credits").await;
    click(&c, "a[href='/console/users']").await;
    click(
        &c,
        &format!(
            "button[aria-label='Clear the failed sign-ins of {}']",
            reader.to_lowercase()
        ),
    )
    .await;
    let done = find(&c, ".notice.done").await.text().await.expect("notice");
    assert!(done.contains("can sign in again now"), "{done}");
    screenshot(&c, "users-unlock").await;
    click(&c, ".signout button").await;
    find(&c, "#email").await;

    // The reader signs in at once, sees the catalogue and no Sync button.
    sign_in_form(&c, &app, &reader).await;
    find(&c, "#credits").await;
    click(&c, "a[href='/console/templates']").await;
    find(&c, "#templates").await;
    let html = c.source().await.expect("source");
    assert!(!html.contains("Sync with Meta") && !html.contains("id=\"sync\""));
    assert!(!html.contains("/console/users"), "no admin pages offered");
    click(&c, "a[href='/console/campaigns']").await;
    find(&c, "main h1").await;
    let html = c.source().await.expect("source");
    assert!(
        !html.contains("New campaign"),
        "a reader creates no campaign"
    );
    c.close().await.ok();
}

#[tokio::test]
async fn in_a_browser_an_operator_schedules_and_cancels_a_campaign_and_cannot_open_another_tenants_ids(
) {
    let Some(url) = webdriver_url() else {
        return;
    };
    let app = spawn_app(Backend::Memory).await;
    let t = app.onboard(10).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let before = app.credits(&t.key).await;
    let (c, _turn) = browser(&url).await;
    sign_in_form(&c, &app, &email).await;
    find(&c, "#credits").await;

    click(&c, "a[href='/console/campaigns']").await;
    fill(&c, "#c-name", "Weekend promo").await;
    click(&c, "#c-template option[value='order_update:en_US']").await;
    fill(&c, "#c-parameters", "ORDER-12").await;
    fill(&c, "#c-numbers", "+60123450021\n+60123450022").await;
    // A `datetime-local` control is typed differently by each locale; its value is set
    // as the browser would after a person picked a time (UTC, 2 hours ahead).
    let at = (chrono::Utc::now() + chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    c.execute(
        "document.querySelector('#c-send-at').value = arguments[0]",
        vec![json!(at)],
    )
    .await
    .expect("the send time set");
    click_and_wait_for_page(&c, "#new-campaign button[type=submit]").await;
    let status = find(&c, "#campaign-status")
        .await
        .text()
        .await
        .expect("status");
    assert_eq!(status.trim(), "scheduled");
    assert!(c
        .source()
        .await
        .unwrap_or_default()
        .contains("Weekend promo"));
    assert_eq!(
        app.credits(&t.key).await,
        before - 2,
        "debited when accepted"
    );

    // Listed, then cancelled from its page: refunded, and nothing reaches Meta.
    click(&c, "a[href='/console/campaigns']").await;
    let list = c.source().await.unwrap_or_default();
    assert!(list.contains("Weekend promo"), "listed by name");
    c.back().await.expect("back to the campaign");
    click_and_wait_for_page(&c, "form[action$='/cancel'] button[type=submit]").await;
    let asked = c.source().await.unwrap_or_default();
    assert!(
        asked.contains("Cancel the campaign “Weekend promo”?"),
        "{asked}"
    );
    click_and_wait_for_page(&c, "form:has(input[name=confirm]) button.danger").await;
    let status = find(&c, "#campaign-status")
        .await
        .text()
        .await
        .expect("status");
    assert_eq!(status.trim(), "cancelled");
    assert_eq!(
        app.credits_settled(&t.key, before).await,
        before,
        "refunded"
    );
    for to in ["60123450021", "60123450022"] {
        assert!(
            app.sandbox_requests_to(to).is_empty(),
            "a cancelled scheduled campaign sends nothing"
        );
    }

    // Another tenant's campaign and message, asked for by id: not shown (the API's 404).
    let other = app.onboard(10).await;
    let other_message = app.send_ok(&other.key, "+60123450031").await;
    let (status, made) = call(
        &app,
        "POST",
        "/v1/broadcasts",
        Some(&other.key),
        Some(json!({
            "template": {"name": "order_update", "language": "en_US", "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "ORDER-13"}]}]},
            "recipients": ["+60123450032"],
        })),
    )
    .await;
    assert_eq!(status, 202, "{made}");
    let other_campaign = made["id"].as_str().unwrap_or_default().to_owned();
    for (url, shown) in [
        (
            format!("/console/campaigns/{other_campaign}"),
            "#campaign-status",
        ),
        (
            format!("/console/messages/{other_message}"),
            "#message-status",
        ),
    ] {
        c.goto(&app.url(&url)).await.expect("page");
        find(&c, "main").await;
        assert!(
            c.find(Locator::Css(shown)).await.is_err(),
            "another tenant's {url} is not shown"
        );
    }
    c.close().await.ok();
}
