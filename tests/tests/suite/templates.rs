//! The template catalogue end to end, through local mode on both backends: synced from the
//! sandbox's Meta template API at onboarding, on request and on the daily schedule; kept
//! current by Meta's template webhooks; deciding what sends may go and what they cost.

use std::sync::Arc;

use async_trait::async_trait;
use kirim::config::Backend;
use kirim::domain::template::{MetaTemplate, MetaTemplatePage};
use kirim::domain::{TemplateCategory, TemplateQuality, TemplateStatus};
use kirim::ports::{CatalogueTemplate, MetaAccepted, MetaClient, MetaSendError, TemplateQuery};
use kirim::secret::Secret;
use kirim::service::templates;
use kirim_tests::{spawn_app, template_of, TestApp};
use serde_json::{json, Value};

const WABA: &str = "1000001";

async fn get(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let res = app
        .http
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn post(app: &TestApp, key: &str, path: &str, body: Value) -> (u16, Value) {
    let res = app
        .http
        .post(app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

fn one_param() -> Value {
    json!([{"type": "body", "parameters": [{"type": "text", "text": "P-1"}]}])
}

fn send_body(to: &str, template: Value) -> Value {
    json!({"to": to, "template": template})
}

async fn catalogue(app: &TestApp, key: &str, query: &str) -> Vec<String> {
    let (s, body) = get(app, key, &format!("/v1/templates{query}")).await;
    assert_eq!(s, 200, "{body}");
    body["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}/{}/{}",
                t["name"].as_str().unwrap(),
                t["category"].as_str().unwrap(),
                t["status"].as_str().unwrap()
            )
        })
        .collect()
}

async fn onboarding_syncs_the_catalogue_which_lists_with_filters_and_pages(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (s, body) = get(&app, &t.key, "/v1/templates").await;
    assert_eq!(s, 200, "{body}");
    let first = &body["templates"][0];
    assert_eq!(
        (
            first["name"].as_str(),
            first["language"].as_str(),
            first["category"].as_str(),
            first["status"].as_str(),
            first["quality"].as_str(),
            first["body_parameters"].as_u64(),
            first["waba_id"].as_str()
        ),
        (
            Some("login_code"),
            Some("en_US"),
            Some("authentication"),
            Some("approved"),
            Some("green"),
            Some(1),
            Some(WABA)
        )
    );
    assert!(first["updated_at"].is_string());
    assert_eq!(body["next_cursor"], Value::Null);
    assert_eq!(
        catalogue(&app, &t.key, "").await,
        [
            "login_code/authentication/approved",
            "order_update/utility/approved",
            "paused_promo/marketing/paused",
            "pending_notice/utility/pending",
            "promo_sale/marketing/approved"
        ]
    );
    assert_eq!(
        catalogue(&app, &t.key, "?status=approved&category=marketing").await,
        ["promo_sale/marketing/approved"]
    );
    assert_eq!(catalogue(&app, &t.key, "?category=utility").await.len(), 2);
    // Pages of two.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/templates?limit=2&cursor={c}"),
            None => "/v1/templates?limit=2".into(),
        };
        let (s, body) = get(&app, &t.key, &q).await;
        assert_eq!(s, 200, "{body}");
        let page = body["templates"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    for bad in [
        "?status=gone",
        "?category=MARKETING",
        "?limit=0",
        "?limit=101",
        "?cursor=%20",
        "?colour=red",
    ] {
        let (s, body) = get(&app, &t.key, &format!("/v1/templates{bad}")).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{bad}: {body}"
        );
    }
}

async fn every_refusal_code_refuses_a_send_or_broadcast_with_nothing_debited_or_stored(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let cases = [
        (
            json!({"name": "no_such_template", "language": "en_US", "components": one_param()}),
            "template_not_found",
        ),
        (
            json!({"name": "order_update", "language": "ms", "components": one_param()}),
            "template_not_found",
        ),
        (
            json!({"name": "paused_promo", "language": "en_US", "components": one_param()}),
            "template_not_approved",
        ),
        (
            json!({"name": "pending_notice", "language": "en_US"}),
            "template_not_approved",
        ),
        (
            json!({"name": "promo_sale", "language": "en_US", "category": "utility", "components": one_param()}),
            "template_category_mismatch",
        ),
        (
            json!({"name": "order_update", "language": "en_US", "category": "utility"}),
            "template_parameters_mismatch",
        ),
        (
            json!({"name": "order_update", "language": "en_US", "components": [{"type": "BODY", "parameters": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
            "template_parameters_mismatch",
        ),
    ];
    for (template, code) in &cases {
        let (s, body) = post(
            &app,
            &t.key,
            "/v1/messages",
            send_body("+60123460001", template.clone()),
        )
        .await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (422, Some(*code)),
            "{template}: {body}"
        );
        let (s, body) = post(
            &app,
            &t.key,
            "/v1/broadcasts",
            json!({"template": template, "recipients": ["+60123460002", "+60123460003"]}),
        )
        .await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (422, Some(*code)),
            "broadcast {template}: {body}"
        );
    }
    assert_eq!(app.credits(&t.key).await, 5, "nothing debited");
    let (_, listed) = get(&app, &t.key, "/v1/messages").await;
    assert_eq!(listed["messages"], json!([]), "nothing stored");
    assert!(app.app.sandbox.received().is_empty(), "nothing sent");

    // Without a category the catalogue's is used; components' type in any case.
    let (s, body) = post(&app, &t.key, "/v1/messages", send_body("+60123460004",
        json!({"name": "promo_sale", "language": "en_US", "components": [{"type": "BODY", "parameters": [{"type": "text", "text": "X"}]}]}))).await;
    assert_eq!(s, 202, "{body}");
    let view = app.message(&t.key, body["id"].as_str().unwrap()).await;
    assert_eq!(view["template"]["category"], "marketing");
}

async fn a_template_paused_by_metas_webhook_is_then_refused_as_not_approved(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let promo = template_of("marketing");
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123461001", promo.clone()),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    // Delivered before Meta pauses it (a send still queued then is refused by Meta, refunded).
    let first = body["id"].as_str().unwrap();
    assert_eq!(
        app.wait_status(&t.key, first, "read").await["status"],
        "read"
    );
    app.sandbox_template(
        WABA,
        "promo_sale",
        "en_US",
        json!({"status": "paused", "quality": "red"}),
    )
    .await;
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123461002", promo.clone()),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_not_approved")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("paused"),
        "{body}"
    );
    assert_eq!(app.credits(&t.key).await, 4, "only the first was paid for");
    let (_, listed) = get(
        &app,
        &t.key,
        "/v1/templates?category=marketing&status=paused",
    )
    .await;
    let names: Vec<&str> = listed["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["paused_promo", "promo_sale"]);
    assert_eq!(listed["templates"][1]["quality"], "red");
    // Approved again: it goes again.
    app.sandbox_template(WABA, "promo_sale", "en_US", json!({"status": "approved"}))
        .await;
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123461003", promo),
    )
    .await;
    assert_eq!(s, 202, "{body}");
}

async fn a_recategorised_template_changes_the_price_debited(b: Backend) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.prices = kirim::config::Prices {
        marketing: 3,
        utility: 1,
        authentication: 2,
        session: 1,
    };
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(20).await;
    let order = json!({"name": "order_update", "language": "en_US", "components": one_param()});
    let promo = json!({"name": "promo_sale", "language": "en_US", "components": one_param()});
    assert_eq!(
        post(
            &app,
            &t.key,
            "/v1/messages",
            send_body("+60123462001", order.clone())
        )
        .await
        .0,
        202
    );
    assert_eq!(app.credits(&t.key).await, 19, "utility: 1");
    assert_eq!(
        post(
            &app,
            &t.key,
            "/v1/messages",
            send_body("+60123462002", promo.clone())
        )
        .await
        .0,
        202
    );
    assert_eq!(app.credits(&t.key).await, 16, "marketing: 3");

    // Meta recategorises: utility → marketing, marketing → utility.
    app.sandbox_template(
        WABA,
        "order_update",
        "en_US",
        json!({"category": "marketing"}),
    )
    .await;
    app.sandbox_template(WABA, "promo_sale", "en_US", json!({"category": "utility"}))
        .await;
    assert_eq!(
        post(
            &app,
            &t.key,
            "/v1/messages",
            send_body("+60123462003", order.clone())
        )
        .await
        .0,
        202
    );
    assert_eq!(
        app.credits(&t.key).await,
        13,
        "order_update now costs marketing's 3"
    );
    assert_eq!(
        post(
            &app,
            &t.key,
            "/v1/messages",
            send_body("+60123462004", promo)
        )
        .await
        .0,
        202
    );
    assert_eq!(
        app.credits(&t.key).await,
        12,
        "promo_sale now costs utility's 1"
    );
    let mut claimed = order;
    claimed["category"] = json!("utility");
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123462005", claimed),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_category_mismatch"))
    );
    assert_eq!(app.credits(&t.key).await, 12);
}

async fn a_sync_answers_its_counts_and_removes_what_meta_no_longer_lists(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (s, body) = post(&app, &t.key, "/v1/templates/sync", json!({})).await;
    assert_eq!((s, &body), (200, &json!({"synced": 5, "removed": 0})));
    // A template Meta no longer has (deleted at Meta while no webhook came).
    let deps = &app.app.deps;
    let gone = CatalogueTemplate {
        waba_id: WABA.into(),
        name: "spring_sale".into(),
        language: "en_US".into(),
        category: TemplateCategory::Marketing,
        status: TemplateStatus::Approved,
        quality: TemplateQuality::Green,
        body_parameters: 0,
        meta_id: None,
        updated_at: chrono::Utc::now(),
        expires_at: None,
    };
    deps.templates.put_template(&gone).await.unwrap();
    let (s, body) = post(&app, &t.key, "/v1/templates/sync", json!({})).await;
    assert_eq!((s, &body), (200, &json!({"synced": 5, "removed": 1})));
    assert_eq!(
        deps.templates
            .get_template(WABA, "spring_sale", "en_US")
            .await
            .unwrap(),
        None
    );
}

/// Meta as the sandbox, whose list (in pages of two) shifts between its first and second
/// page: a template before the cursor left the list, so the one at the page boundary (the
/// third) is never on a page. Its list by name shows it, unless `names_fail`.
struct ShiftingList {
    sandbox: Arc<dyn MetaClient>,
    names_fail: bool,
}

#[async_trait]
impl MetaClient for ShiftingList {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        waba: &str,
        token: &Secret,
        after: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        let mut all = Vec::new();
        let mut next = None;
        loop {
            let page = self
                .sandbox
                .list_templates(waba, token, next.as_deref())
                .await?;
            all.extend(page.templates);
            match page.after {
                Some(a) => next = Some(a),
                None => break,
            }
        }
        Ok(match after {
            None => MetaTemplatePage {
                templates: all[..2].to_vec(),
                skipped: 0,
                after: Some("offset-2".into()),
            },
            Some(_) => MetaTemplatePage {
                templates: all[3..].to_vec(),
                skipped: 0,
                after: None,
            },
        })
    }
    async fn list_templates_named(
        &self,
        waba: &str,
        token: &Secret,
        name: &str,
        after: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        if self.names_fail {
            return Err(MetaSendError::Timeout);
        }
        self.sandbox
            .list_templates_named(waba, token, name, after)
            .await
    }
}

/// Meta's cursors are positions: a template leaving its list between two pages hides the
/// next page's first one from that pass. A template missing from one pass is removed only
/// once Meta's list by its name says it is gone too; a lookup that fails removes nothing.
async fn a_template_a_shifting_list_skipped_is_kept_when_its_name_is_still_listed(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let mut deps = app.app.deps.clone();
    let tenant = deps
        .tenants
        .get_tenant(&kirim::domain::TenantId::parse(&t.tenant_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let before = catalogue_size(&deps).await;
    assert_eq!(before, 5);
    for names_fail in [true, false] {
        deps.meta = Arc::new(ShiftingList {
            sandbox: app.app.deps.meta.clone(),
            names_fail,
        });
        let synced = templates::sync(&deps, &tenant).await.expect("the sync");
        assert_eq!(synced.removed, 0, "names_fail: {names_fail}");
        assert_eq!(catalogue_size(&deps).await, 5, "names_fail: {names_fail}");
    }
    // Kept, and written as the name's list shows it.
    assert_eq!(
        templates::sync(&deps, &tenant)
            .await
            .expect("the sync")
            .synced,
        5
    );
}

/// Meta, answering the sandbox's first page and then failing.
struct FailsAfterOnePage;

#[async_trait]
impl MetaClient for FailsAfterOnePage {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &Secret,
        after: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        match after {
            None => Ok(MetaTemplatePage {
                templates: vec![MetaTemplate {
                    name: "order_update".into(),
                    language: "en_US".into(),
                    category: TemplateCategory::Marketing,
                    status: TemplateStatus::Approved,
                    quality: TemplateQuality::Yellow,
                    body_parameters: 1,
                    meta_id: None,
                }],
                skipped: 0,
                after: Some("page2".into()),
            }),
            Some(_) => Err(MetaSendError::Api {
                http_status: 500,
                code: 131000,
                title: "Something went wrong".into(),
                is_transient: None,
            }),
        }
    }
}

/// Syncs `t`'s catalogue from `meta`, which must fail: the error as the API answers it,
/// and the deps used (to look at the catalogue after).
async fn failed_sync(
    app: &TestApp,
    t: &kirim_tests::Onboarded,
    meta: Arc<dyn MetaClient>,
) -> (kirim::http::error::ApiError, kirim::service::Deps) {
    let mut deps = app.app.deps.clone();
    deps.meta = meta;
    let tenant = deps
        .tenants
        .get_tenant(&kirim::domain::TenantId::parse(&t.tenant_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let err = templates::sync(&deps, &tenant)
        .await
        .expect_err("the sync fails");
    (kirim::http::error::ApiError::from(err), deps)
}

/// How many templates the catalogue of the sandbox's WABA has.
async fn catalogue_size(deps: &kirim::service::Deps) -> usize {
    deps.templates
        .list_templates(
            WABA,
            &TemplateQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .templates
        .len()
}

async fn a_sync_failing_half_way_keeps_the_previous_catalogue_and_says_what_it_synced(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (api, deps) = failed_sync(&app, &t, Arc::new(FailsAfterOnePage)).await;
    assert_eq!((api.status.as_u16(), api.code), (502, "meta_unavailable"));
    assert!(
        api.message.contains("131000") && api.message.contains("1 templates were synced"),
        "{}",
        api.message
    );
    // The page read was applied; nothing was removed: every send still decided as before.
    assert_eq!(catalogue_size(&deps).await, 5);
    let order = deps
        .templates
        .get_template(WABA, "order_update", "en_US")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (order.category, order.quality),
        (TemplateCategory::Marketing, TemplateQuality::Yellow)
    );
    assert_eq!(
        post(
            &app,
            &t.key,
            "/v1/messages",
            send_body("+60123463001", template_of("marketing"))
        )
        .await
        .0,
        202
    );
}

/// Meta as the sandbox for the sandbox's WABA, failing for any other.
struct OtherWabasFail(Arc<dyn MetaClient>);

#[async_trait]
impl MetaClient for OtherWabasFail {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        waba: &str,
        token: &Secret,
        after: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        if waba == WABA {
            return self.0.list_templates(waba, token, after).await;
        }
        Err(MetaSendError::Api {
            http_status: 500,
            code: 131000,
            title: "Something went wrong".into(),
            is_transient: None,
        })
    }
}

/// A tenant's numbers on two WABAs, the second's list failing: the `502` says which WABA
/// failed and what the first one's sync did, its removals included (it said "none
/// removed", of the failing WABA only, while the first had removed templates).
async fn a_sync_failing_at_a_later_waba_says_what_the_earlier_ones_synced_and_removed(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let mut deps = app.app.deps.clone();
    let gone = CatalogueTemplate {
        waba_id: WABA.into(),
        name: "spring_sale".into(),
        language: "en_US".into(),
        category: TemplateCategory::Marketing,
        status: TemplateStatus::Approved,
        quality: TemplateQuality::Green,
        body_parameters: 0,
        meta_id: None,
        updated_at: chrono::Utc::now() - chrono::Duration::minutes(10),
        expires_at: None,
    };
    deps.templates.put_template(&gone).await.unwrap();
    deps.meta = Arc::new(OtherWabasFail(deps.meta.clone()));
    let tenant = deps
        .tenants
        .get_tenant(&kirim::domain::TenantId::parse(&t.tenant_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let err = templates::sync_all(&deps, &tenant, &[WABA.to_owned(), "7654321".to_owned()])
        .await
        .expect_err("the second WABA fails");
    let api = kirim::http::error::ApiError::from(err);
    assert_eq!((api.status.as_u16(), api.code), (502, "meta_unavailable"));
    assert!(
        api.message.contains("WABA 7654321")
            && api.message.contains("131000")
            && api.message.contains("5 templates synced, 1 removed"),
        "{}",
        api.message
    );
    assert_eq!(
        deps.templates
            .get_template(WABA, "spring_sale", "en_US")
            .await
            .unwrap(),
        None,
        "the first WABA's removal stands"
    );
}

/// Meta, answering the same page however it is asked, with the cursors it was given in a
/// cycle (`A`, `B`, `A`, ...; one cursor: the same one again), counting the calls.
struct SamePageForever(&'static [&'static str], std::sync::atomic::AtomicUsize);

#[async_trait]
impl MetaClient for SamePageForever {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &Secret,
        _: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        let n = self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let after = self.0[n % self.0.len()];
        Ok(MetaTemplatePage {
            templates: vec![MetaTemplate {
                name: "order_update".into(),
                language: "en_US".into(),
                category: TemplateCategory::Utility,
                status: TemplateStatus::Approved,
                quality: TemplateQuality::Green,
                body_parameters: 1,
                meta_id: None,
            }],
            skipped: 0,
            after: Some(after.into()),
        })
    }
}

async fn a_template_list_that_repeats_its_page_removes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    // An endless list is no complete one: a cursor given again (at once, or after others)
    // ends the read there, not at the page cap.
    for (cycle, calls) in [(&["again"][..], 2), (&["A", "B"][..], 3)] {
        let meta = Arc::new(SamePageForever(cycle, Default::default()));
        let (api, deps) = failed_sync(&app, &t, meta.clone()).await;
        assert_eq!((api.status.as_u16(), api.code), (502, "meta_unavailable"));
        assert_eq!(
            meta.1.load(std::sync::atomic::Ordering::SeqCst),
            calls,
            "{cycle:?}"
        );
        // The rest of the catalogue (on pages never read) is all still there.
        assert_eq!(catalogue_size(&deps).await, 5);
    }
}

async fn a_redelivered_older_template_webhook_never_undoes_a_newer_one(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    // Meta's times: after the onboarding's sync.
    let now = chrono::Utc::now().timestamp();
    let note = |time: i64, event: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "time": now + time, "changes": [
        {"field": "message_template_status_update", "value": {"event": event, "message_template_id": 9,
            "message_template_name": "order_update", "message_template_language": "en_US", "reason": "NONE"}}]}]})
    };
    // Meta pauses the template (time 200); its earlier approval (time 100) comes again
    // late, as a body Meta delivers again after a 500 does.
    assert_eq!(app.post_webhook(&note(200, "PAUSED")).await.status(), 200);
    assert_eq!(app.post_webhook(&note(100, "APPROVED")).await.status(), 200);
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123464101", template_of("utility")),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_not_approved")),
        "still paused: {body}"
    );
    // Meta's reinstatement, later still, applies.
    assert_eq!(app.post_webhook(&note(300, "APPROVED")).await.status(), 200);
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123464102", template_of("utility")),
    )
    .await;
    assert_eq!(s, 202, "{body}");
}

/// A template archived at Meta cannot be sent, and one unarchived can again once its
/// re-read (queued by the unarchive, without a sync) finds it approved at Meta (it was
/// removed, the unarchive skipped as unknown: refused `template_not_found` until a sync
/// more than 5 minutes later); an archive delivered again late never undoes the unarchive.
async fn an_archived_template_is_refused_until_meta_unarchives_it_and_a_late_archive_changes_nothing(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let now = chrono::Utc::now().timestamp();
    let note = |time: i64, event: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "time": now + time, "changes": [
        {"field": "message_template_status_update", "value": {"event": event, "message_template_id": 9,
            "message_template_name": "order_update", "message_template_language": "en_US", "reason": "NONE"}}]}]})
    };
    let send = |to: &'static str| {
        let (app, key) = (&app, t.key.clone());
        async move {
            post(
                app,
                &key,
                "/v1/messages",
                send_body(to, template_of("utility")),
            )
            .await
        }
    };
    assert_eq!(app.post_webhook(&note(100, "ARCHIVED")).await.status(), 200);
    let (s, body) = send("+60123464111").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_not_approved")),
        "archived: {body}"
    );
    let (s, listed) = get(&app, &t.key, "/v1/templates?status=archived").await;
    assert_eq!(s, 200, "{listed}");
    assert_eq!(listed["templates"][0]["name"], "order_update", "{listed}");
    assert_eq!(
        app.post_webhook(&note(200, "UNARCHIVED")).await.status(),
        200
    );
    let read = template_until(&app, &t.key, "order_update", "en_US", |v| {
        v["status"] == "approved"
    })
    .await;
    assert_eq!(read["status"], "approved", "{read}");
    let (s, body) = send("+60123464112").await;
    assert_eq!(s, 202, "unarchived: {body}");
    // The archive, delivered again after a 500, is older than the unarchive.
    assert_eq!(app.post_webhook(&note(100, "ARCHIVED")).await.status(), 200);
    let (s, body) = send("+60123464113").await;
    assert_eq!(s, 202, "still sendable: {body}");
}

/// Meta's `UNARCHIVED` names no status: the template is back to whichever it had before
/// its archiving. Until its re-read applies the status Meta lists it stays archived, not
/// sendable; then a template paused before its archiving is paused again, and only an
/// approved one can be sent. No queue poller runs: the re-read is run here.
async fn an_unarchived_template_takes_back_the_status_meta_lists_not_approved(b: Backend) {
    use kirim::service::jobs::TemplateRefreshJob;
    let cfg = kirim_infra::local::LocalConfig {
        pollers: 0,
        ..kirim_tests::local_config(b).await
    };
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    let now = chrono::Utc::now().timestamp();
    let note = |name: &str, time: i64, event: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "time": now + time, "changes": [
        {"field": "message_template_status_update", "value": {"event": event, "message_template_id": 9,
            "message_template_name": name, "message_template_language": "en_US", "reason": "NONE"}}]}]})
    };
    let status = |name: &'static str| async move {
        deps.templates
            .get_template(WABA, name, "en_US")
            .await
            .unwrap()
            .map(|t| t.status)
    };
    // `paused_promo` is paused at Meta, `order_update` approved.
    assert_eq!(status("paused_promo").await, Some(TemplateStatus::Paused));
    for name in ["paused_promo", "order_update"] {
        for (time, event) in [(100, "ARCHIVED"), (200, "UNARCHIVED")] {
            let res = app.post_webhook(&note(name, time, event)).await;
            assert_eq!(res.status(), 200);
        }
        assert_eq!(status(name).await, Some(TemplateStatus::Archived), "{name}");
    }
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123464121", template_of("utility")),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_not_approved")),
        "not sendable before its status is read: {body}"
    );
    for name in ["paused_promo", "order_update"] {
        let job = TemplateRefreshJob {
            tenant_id: kirim::domain::TenantId::parse(&t.tenant_id).unwrap(),
            waba_id: WABA.into(),
            name: name.into(),
            language: "en_US".into(),
            approved_meta_time: Some(now + 200),
            unarchived: true,
        };
        assert_eq!(templates::refresh(deps, &job).await.unwrap(), None);
    }
    assert_eq!(status("paused_promo").await, Some(TemplateStatus::Paused));
    assert_eq!(status("order_update").await, Some(TemplateStatus::Approved));
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123464122", template_of("utility")),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    // The archive, delivered again late, is older than the status read for the unarchive.
    let res = app
        .post_webhook(&note("order_update", 100, "ARCHIVED"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(status("order_update").await, Some(TemplateStatus::Approved));
}

async fn a_template_webhook_for_a_waba_no_tenant_has_is_ignored_with_200(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let now = chrono::Utc::now().timestamp();
    let note = |waba: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": now, "changes": [
        {"field": "message_template_status_update", "value": {"event": "DISABLED", "message_template_id": 9,
            "message_template_name": "order_update", "message_template_language": "en_US", "reason": "NONE"}}]}]})
    };
    let res = app.post_webhook(&note("999999")).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["summary"]["ignored"], 1, "{body}");
    assert_eq!(body["summary"]["applied"], 0, "{body}");
    assert_eq!(
        post(
            &app,
            &t.key,
            "/v1/messages",
            send_body("+60123464001", template_of("utility"))
        )
        .await
        .0,
        202
    );
    // The same change for the tenant's WABA applies.
    let res = app.post_webhook(&note(WABA)).await;
    assert_eq!(res.status(), 200);
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123464002", template_of("utility")),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_not_approved"))
    );
}

async fn the_daily_schedule_syncs_every_active_tenants_catalogue(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let deps = &app.app.deps;
    // The catalogue lost it (expired, as if no sync had renewed it for its whole period;
    // a removal would leave a tombstone that keeps a lagging sync from writing it back).
    let mut lost = deps
        .templates
        .get_template(WABA, "promo_sale", "en_US")
        .await
        .unwrap()
        .unwrap();
    let now = chrono::Utc::now();
    lost.updated_at = now - chrono::Duration::days(2);
    lost.expires_at = Some(now.timestamp() - 60);
    deps.templates.put_template(&lost).await.unwrap();
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123465001", template_of("marketing")),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_not_found"))
    );
    kirim::queue_handlers::scheduled_retention(deps)
        .await
        .unwrap();
    assert!(deps
        .templates
        .get_template(WABA, "promo_sale", "en_US")
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        post(
            &app,
            &t.key,
            "/v1/messages",
            send_body("+60123465002", template_of("marketing"))
        )
        .await
        .0,
        202
    );
}

/// A language code written with a dash (`en-US`, as BCP 47 writes it) is the catalogue's
/// `en_US`, as Meta's own list and webhooks write it: the send is accepted and sent, not
/// refused as a template the catalogue lacks.
async fn a_template_language_written_with_a_dash_is_the_catalogues_underscore_code(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let order = json!({"name": "order_update", "language": "en-US", "components": one_param()});
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123462101", order),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    app.wait_status(&t.key, &id, "read").await;
    let promo = json!({"name": "promo_sale", "language": "en-US", "components": one_param()});
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/broadcasts",
        json!({"template": promo, "recipients": ["+60123462102"]}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
}

/// The catalogue's view of one template, polled until `done` holds (the re-read runs on
/// the dispatcher, after the webhook's answer) or 20 s pass.
async fn template_until(
    app: &TestApp,
    key: &str,
    name: &str,
    language: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (s, body) = get(app, key, "/v1/templates?limit=100").await;
        assert_eq!(s, 200, "{body}");
        last = body["templates"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|t| t["name"] == name && t["language"] == language)
                    .cloned()
            })
            .unwrap_or(Value::Null);
        if done(&last) {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    last
}

/// An edit at Meta approved again (its webhook carries no components): the template is
/// read back from Meta, so sends take its new number of body parameters without a sync.
async fn an_edited_template_approved_again_takes_its_new_body_parameters_without_a_sync(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let two = json!({"name": "order_update", "language": "en_US",
        "components": [{"type": "body", "parameters": [
            {"type": "text", "text": "P-1"}, {"type": "text", "text": "P-2"}]}]});
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123461201", two.clone()),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_parameters_mismatch")),
        "one parameter before the edit: {body}"
    );
    app.sandbox_template(
        WABA,
        "order_update",
        "en_US",
        json!({"body_parameters": 2, "status": "approved"}),
    )
    .await;
    let seen = template_until(&app, &t.key, "order_update", "en_US", |v| {
        v["body_parameters"] == 2
    })
    .await;
    assert_eq!(seen["body_parameters"], 2, "read back from Meta: {seen}");
    assert_eq!(seen["status"], "approved");
    let (s, body) = post(&app, &t.key, "/v1/messages", send_body("+60123461202", two)).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(
        app.wait_status(&t.key, body["id"].as_str().unwrap(), "read")
            .await["status"],
        "read",
        "Meta (the sandbox) takes two parameters now too"
    );
    let (s, body) = post(
        &app,
        &t.key,
        "/v1/messages",
        send_body("+60123461203", template_of("utility")),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_parameters_mismatch")),
        "the old count is refused before anything is debited: {body}"
    );
}

/// A template created and approved at Meta since the last sync: its approval brings it
/// into the catalogue (read from Meta), sendable without a sync.
async fn a_new_template_approved_at_meta_joins_the_catalogue_without_a_sync(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    app.sandbox_template(
        WABA,
        "welcome_note",
        "ms",
        json!({"category": "utility", "body_parameters": 1}),
    )
    .await;
    let (_, listed) = get(&app, &t.key, "/v1/templates?limit=100").await;
    assert!(
        !listed.to_string().contains("welcome_note"),
        "pending at Meta, no webhook: not in the catalogue yet: {listed}"
    );
    app.sandbox_template(WABA, "welcome_note", "ms", json!({"status": "approved"}))
        .await;
    let seen = template_until(&app, &t.key, "welcome_note", "ms", |v| {
        v["status"] == "approved"
    })
    .await;
    assert_eq!(
        (
            seen["status"].as_str(),
            seen["category"].as_str(),
            seen["body_parameters"].as_u64()
        ),
        (Some("approved"), Some("utility"), Some(1)),
        "{seen}"
    );
    let new = json!({"name": "welcome_note", "language": "ms",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "P-1"}]}]});
    let (s, body) = post(&app, &t.key, "/v1/messages", send_body("+60123461204", new)).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(
        app.wait_status(&t.key, body["id"].as_str().unwrap(), "read")
            .await["status"],
        "read"
    );
}

/// Meta, answering every template read with one error.
struct ListFails(MetaSendError);

#[async_trait]
impl MetaClient for ListFails {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &Secret,
        _: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        Err(self.0.clone())
    }
}

/// An approved template's re-read that Meta fails is tried again only when Meta may
/// answer later, by Meta's error table as a send's failure is (a rate limit or transient
/// code whatever its HTTP status, Meta's `is_transient` for an unknown code, else a 5xx or
/// 429; no answer); otherwise the job ends and the daily sync reads it. Either way the
/// catalogue is unchanged.
async fn a_template_re_read_is_retried_only_when_meta_may_answer_later(b: Backend) {
    use kirim::service::jobs::{Outcome, QueueJob, TemplateRefreshJob};
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let api = |code: i64, http_status: u16, is_transient: Option<bool>| MetaSendError::Api {
        http_status,
        code,
        title: "x".into(),
        is_transient,
    };
    let job = TemplateRefreshJob {
        tenant_id: kirim::domain::TenantId::parse(&t.tenant_id).unwrap(),
        waba_id: WABA.into(),
        name: "order_update".into(),
        language: "en_US".into(),
        approved_meta_time: None,
        unarchived: false,
    };
    let unknown = 999_001;
    for (error, retried) in [
        (api(unknown, 500, None), true),
        (api(unknown, 429, None), true),
        (api(unknown, 400, Some(true)), true),
        (api(unknown, 503, Some(false)), false),
        (api(unknown, 400, None), false),
        (api(4, 400, None), true),
        (api(80007, 400, Some(false)), true),
        (api(100, 500, None), false),
        (MetaSendError::Timeout, true),
        (MetaSendError::Connection("refused".into()), true),
        (MetaSendError::Protocol(502), true),
        (MetaSendError::Protocol(200), false),
    ] {
        let mut deps = app.app.deps.clone();
        deps.meta = Arc::new(ListFails(error.clone()));
        let body = QueueJob::TemplateRefresh(job.clone()).to_body().unwrap();
        let outcome = kirim::service::dispatch::handle(&deps, &body).await;
        assert_eq!(
            matches!(outcome, Outcome::Backoff(_)),
            retried,
            "{error:?}: {outcome:?}"
        );
        if !retried {
            assert_eq!(outcome, Outcome::Done, "{error:?}");
        }
    }
    let order = app
        .app
        .deps
        .templates
        .get_template(WABA, "order_update", "en_US")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order.body_parameters, 1);
    // A tenant no longer there: nothing to read with, done.
    let gone = TemplateRefreshJob {
        tenant_id: kirim::domain::TenantId::generate(),
        ..job
    };
    assert_eq!(
        templates::refresh(&app.app.deps, &gone).await.unwrap(),
        None
    );
}

/// An approval whose webhook came while a sync that had read the template as pending was
/// still writing: the webhook found nothing to change, the sync then wrote it pending; the
/// re-read applies the approval again, by its Meta time. No queue poller runs, so the
/// webhook's own queued re-read cannot be what applies it.
async fn an_approval_a_lagging_sync_wrote_over_is_applied_again_by_the_re_read(b: Backend) {
    use kirim::service::jobs::TemplateRefreshJob;
    let cfg = kirim_infra::local::LocalConfig {
        pollers: 0,
        ..kirim_tests::local_config(b).await
    };
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(5).await;
    app.sandbox_template(
        WABA,
        "pending_notice",
        "en_US",
        json!({"status": "approved"}),
    )
    .await;
    let approved_at = chrono::Utc::now().timestamp();
    template_until(&app, &t.key, "pending_notice", "en_US", |v| {
        v["status"] == "approved"
    })
    .await;
    // The lagging sync's write: pending, stamped 5 minutes before its read.
    let deps = &app.app.deps;
    let mut pending = deps
        .templates
        .get_template(WABA, "pending_notice", "en_US")
        .await
        .unwrap()
        .unwrap();
    pending.status = TemplateStatus::Pending;
    pending.updated_at = deps.clock.now();
    deps.templates.put_template(&pending).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        deps.templates
            .get_template(WABA, "pending_notice", "en_US")
            .await
            .unwrap()
            .unwrap()
            .status,
        TemplateStatus::Pending,
        "nothing else applies it"
    );
    let job = TemplateRefreshJob {
        tenant_id: kirim::domain::TenantId::parse(&t.tenant_id).unwrap(),
        waba_id: WABA.into(),
        name: "pending_notice".into(),
        language: "en_US".into(),
        approved_meta_time: Some(approved_at),
        unarchived: false,
    };
    assert_eq!(templates::refresh(deps, &job).await.unwrap(), None);
    let now = deps
        .templates
        .get_template(WABA, "pending_notice", "en_US")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, TemplateStatus::Approved);
}

/// Tenants sharing a WABA, the first suspended: an approval is read back with the active
/// one's token (a suspended tenant's re-read would end unread).
async fn a_shared_wabas_approval_is_read_back_with_an_active_tenants_token(b: Backend) {
    let app = spawn_app(b).await;
    let first = app.onboard(5).await;
    let second = app.onboard(5).await;
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{}/suspend", first.tenant_id)))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .json(&json!({"reason": "unpaid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.sandbox_template(
        WABA,
        "order_update",
        "en_US",
        json!({"body_parameters": 2, "status": "approved"}),
    )
    .await;
    let seen = template_until(&app, &second.key, "order_update", "en_US", |v| {
        v["body_parameters"] == 2
    })
    .await;
    assert_eq!(seen["body_parameters"], 2, "{seen}");
}

/// Meta sends a WABA's webhooks (statuses, STOPs, template and account updates) only to
/// apps subscribed to it: onboarding subscribes the app to the tenant's WABA, adding a
/// number on a new WABA subscribes that one, and the admin's sync (as the daily one) asks
/// again, so a subscription removed at Meta comes back.
async fn onboarding_a_new_waba_and_each_sync_subscribe_the_app_to_the_wabas_webhooks(b: Backend) {
    let app = spawn_app(b).await;
    let sandbox = &app.app.sandbox;
    let (first, second) = ("1000771", "1000772");
    let pnid = format!("{}", 100_000 + rand_digits());
    let res = app
        .http
        .post(app.url("/v1/platform/tenants"))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .json(
            &json!({"name": "Kedai", "waba_id": first, "phone_number_id": pnid,
            "meta_access_token": "EAAG-test-meta-token", "credits": 1}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let (tenant, key) = (
        body["tenant"]["id"].as_str().unwrap().to_owned(),
        body["admin_api_key"].as_str().unwrap().to_owned(),
    );
    assert!(sandbox.subscribed(first), "onboarding subscribed its WABA");
    assert!(!sandbox.subscribed(second));
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{tenant}/phone-numbers")))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .json(
            &json!({"phone_number_id": format!("{}", 100_000 + rand_digits()),
            "waba_id": second}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    assert!(
        sandbox.subscribed(second),
        "a number on a new WABA subscribed it"
    );
    // Unsubscribed at Meta (here: the sandbox forgets): the admin's sync subscribes both.
    sandbox.reset();
    assert!(!sandbox.subscribed(first));
    let (s, body) = post(&app, &key, "/v1/templates/sync", json!({})).await;
    assert_eq!(s, 200, "{body}");
    assert!(sandbox.subscribed(first) && sandbox.subscribed(second));
}

fn rand_digits() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 900_000)
        .unwrap_or(7)
}

on_both_backends!(
    a_template_a_shifting_list_skipped_is_kept_when_its_name_is_still_listed,
    onboarding_a_new_waba_and_each_sync_subscribe_the_app_to_the_wabas_webhooks,
    a_template_re_read_is_retried_only_when_meta_may_answer_later,
    an_approval_a_lagging_sync_wrote_over_is_applied_again_by_the_re_read,
    a_shared_wabas_approval_is_read_back_with_an_active_tenants_token,
    an_edited_template_approved_again_takes_its_new_body_parameters_without_a_sync,
    a_new_template_approved_at_meta_joins_the_catalogue_without_a_sync,
    a_template_language_written_with_a_dash_is_the_catalogues_underscore_code,
    onboarding_syncs_the_catalogue_which_lists_with_filters_and_pages,
    every_refusal_code_refuses_a_send_or_broadcast_with_nothing_debited_or_stored,
    a_template_paused_by_metas_webhook_is_then_refused_as_not_approved,
    a_recategorised_template_changes_the_price_debited,
    a_sync_answers_its_counts_and_removes_what_meta_no_longer_lists,
    a_sync_failing_half_way_keeps_the_previous_catalogue_and_says_what_it_synced,
    a_sync_failing_at_a_later_waba_says_what_the_earlier_ones_synced_and_removed,
    a_template_webhook_for_a_waba_no_tenant_has_is_ignored_with_200,
    a_template_list_that_repeats_its_page_removes_nothing,
    a_redelivered_older_template_webhook_never_undoes_a_newer_one,
    an_archived_template_is_refused_until_meta_unarchives_it_and_a_late_archive_changes_nothing,
    an_unarchived_template_takes_back_the_status_meta_lists_not_approved,
    the_daily_schedule_syncs_every_active_tenants_catalogue,
);

/// Meta, taking its time over every page of templates (a slow or hanging Graph API).
struct SlowMeta(std::time::Duration);

#[async_trait]
impl MetaClient for SlowMeta {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &Secret,
        _: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        tokio::time::sleep(self.0).await;
        Ok(MetaTemplatePage::default())
    }
}

/// Meta refusing the app's subscription to a WABA, or never answering it, with the
/// catalogue read as usual; counting the subscriptions asked for.
#[derive(Default)]
struct SubscriptionRefused {
    hang: bool,
    asked: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl MetaClient for SubscriptionRefused {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &Secret,
        _: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        Ok(MetaTemplatePage {
            templates: vec![MetaTemplate {
                name: "order_update".into(),
                language: "en_US".into(),
                category: TemplateCategory::Utility,
                status: TemplateStatus::Approved,
                quality: TemplateQuality::Green,
                body_parameters: 1,
                meta_id: None,
            }],
            skipped: 0,
            after: None,
        })
    }
    async fn subscribe_app(&self, waba_id: &str, _: &Secret) -> Result<(), MetaSendError> {
        self.asked.lock().unwrap().push(waba_id.to_owned());
        if self.hang {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        Err(MetaSendError::Api {
            http_status: 403,
            code: 200,
            title: "no permission".into(),
            is_transient: None,
        })
    }
}

/// A subscription Meta refuses, or never answers, neither undoes nor holds the onboarding:
/// the tenant is onboarded with its catalogue (a hanging one is given up 1 s after the
/// catalogue's read, 5 s at most), and the next sync asks again.
#[tokio::test(start_paused = true)]
async fn a_subscription_meta_refuses_or_never_answers_neither_undoes_nor_holds_the_onboarding() {
    for hang in [false, true] {
        let clock = kirim_tests::ManualClock::new();
        let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
        let meta = Arc::new(SubscriptionRefused {
            hang,
            ..Default::default()
        });
        deps.meta = meta.clone();
        let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
            "name": "Kedai", "waba_id": "7500001", "phone_number_id": "8500001",
            "meta_access_token": "EAAG", "credits": 1}))
        .unwrap();
        let started = tokio::time::Instant::now();
        let (tenant, _) = kirim::service::accounts::create_tenant(&deps, req)
            .await
            .expect("onboarded");
        let took = tokio::time::Instant::now() - started;
        // (The catalogue's read answers at once: a hanging subscription gets its grace.)
        let most = if hang {
            templates::SUBSCRIBE_GRACE
        } else {
            std::time::Duration::ZERO
        };
        assert_eq!(took, most, "hang {hang}");
        let listed = deps
            .templates
            .list_templates(
                "7500001",
                &TemplateQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(listed.templates.len(), 1, "hang {hang}: synced");
        assert_eq!(*meta.asked.lock().unwrap(), ["7500001"]);
        templates::sync(&deps, &tenant).await.expect("a sync");
        assert_eq!(
            *meta.asked.lock().unwrap(),
            ["7500001", "7500001"],
            "asked again"
        );
        // A sync of several WABAs (one after another) is not held past its 20 s by the
        // subscriptions: each gets its grace after its WABA's read, no more.
        let wabas: Vec<String> = (1..=5).map(|i| format!("750000{i}")).collect();
        let started = tokio::time::Instant::now();
        templates::sync_all_within(&deps, &tenant, &wabas, templates::REQUEST_SYNC_TIME)
            .await
            .expect("every catalogue read");
        assert_eq!(
            tokio::time::Instant::now() - started,
            most * 5,
            "hang {hang}"
        );
    }
}

/// The daily sync runs after the sweep in the retention function (900 s timeout): it
/// stops at the run's deadline, begins no WABA after it and cuts short the one reading
/// Meta then, instead of running on until Lambda ends the invocation as failed.
#[tokio::test(start_paused = true)]
async fn the_scheduled_template_sync_stops_at_the_runs_deadline() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    let mut tenants = Vec::new();
    for i in 0..3 {
        let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
            "name": "Kedai", "waba_id": format!("{}", 7_000_000 + i),
            "phone_number_id": format!("{}", 8_000_000 + i), "meta_access_token": "EAAG", "credits": 1}))
        .unwrap();
        let (t, _) = kirim::service::accounts::create_tenant(&deps, req)
            .await
            .unwrap();
        tenants.push(t.id);
    }
    deps.meta = Arc::new(SlowMeta(std::time::Duration::from_millis(400)));
    let started = tokio::time::Instant::now();
    let until = started + std::time::Duration::from_millis(600);
    let done = kirim::service::daily_sync::sync_scheduled(&deps, &tenants, until).await;
    // (Paused time: the sleeps advance it exactly.) The first WABA is synced by 400 ms,
    // the second cut short at 600 ms, the third never begun.
    assert_eq!((done.wabas, done.failed), (1, 1), "{done:?}");
    assert!(done.out_of_time);
    assert_eq!(
        tokio::time::Instant::now() - started,
        std::time::Duration::from_millis(600)
    );
}

/// Meta, noting which WABAs' templates were listed.
#[derive(Default)]
struct ListedWabas(std::sync::Mutex<Vec<String>>);

#[async_trait]
impl MetaClient for ListedWabas {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        waba: &str,
        _: &Secret,
        _: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        self.0.lock().unwrap().push(waba.to_owned());
        Ok(MetaTemplatePage::default())
    }
}

/// More active tenants' WABAs than a run syncs (here: four tenants with two WABAs each, two
/// WABAs a run): each day takes the tenants in another order, so every WABA is synced (and
/// its catalogue's expiry renewed) within days, not the same first ones every day.
#[tokio::test]
async fn the_daily_template_sync_takes_turns_when_there_are_more_wabas_than_a_run_syncs() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let mut tenants = Vec::new();
    let mut wabas = Vec::new();
    for i in 0..4 {
        let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
            "name": "Kedai", "waba_id": format!("{}", 7_300_000 + i),
            "phone_number_id": format!("{}", 8_300_000 + i), "meta_access_token": "EAAG", "credits": 1}))
        .unwrap();
        let (t, _) = kirim::service::accounts::create_tenant(&deps, req)
            .await
            .unwrap();
        let second: kirim::service::numbers::NewNumber = serde_json::from_value(json!({
            "phone_number_id": format!("{}", 8_400_000 + i), "waba_id": format!("{}", 7_400_000 + i)}))
        .unwrap();
        kirim::service::numbers::add(&deps, &t.id, second)
            .await
            .unwrap();
        wabas.push(format!("{}", 7_300_000 + i));
        wabas.push(format!("{}", 7_400_000 + i));
        tenants.push(t.id);
    }
    wabas.sort();
    let meta = Arc::new(ListedWabas::default());
    deps.meta = meta.clone();
    let until = || tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut synced: Vec<String> = Vec::new();
    for _ in 0..60 {
        let done =
            kirim::service::daily_sync::sync_scheduled_at_most(&deps, &tenants, until(), 2).await;
        assert_eq!(done.wabas, 2, "{done:?}");
        synced.extend(std::mem::take(&mut *meta.0.lock().unwrap()));
        clock.advance(chrono::Duration::days(1));
    }
    synced.sort();
    synced.dedup();
    assert_eq!(synced, wabas, "every WABA had its turn within 60 days");
}

/// Onboarding answers the tenant's first admin key, shown once: a slow Meta may not hold
/// that answer past API Gateway's 30 s (a 504 would lose the key and leave the number
/// taken). The catalogue read is given up after 10 s; the tenant is onboarded.
#[tokio::test(start_paused = true)]
async fn onboarding_answers_its_key_within_ten_seconds_however_slow_metas_template_list_is() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    deps.meta = Arc::new(SlowMeta(std::time::Duration::from_secs(3600)));
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
        "name": "Kedai", "waba_id": "7100001", "phone_number_id": "8100001",
        "meta_access_token": "EAAG", "credits": 1}))
    .unwrap();
    let started = tokio::time::Instant::now();
    let (tenant, key) = kirim::service::accounts::create_tenant(&deps, req)
        .await
        .expect("onboarded");
    assert_eq!(
        tokio::time::Instant::now() - started,
        templates::ONBOARDING_SYNC_TIME
    );
    assert!(key.expose().starts_with("kirim_"));
    assert!(deps.tenants.get_tenant(&tenant.id).await.unwrap().is_some());
}

/// A number on a new WABA brings that WABA's catalogue, read as at onboarding: within 10 s
/// however slow Meta is, so that the operator's answer (and the call's audit event, written
/// after it) is not lost to API Gateway's 30 s; the number is added all the same.
#[tokio::test(start_paused = true)]
async fn a_number_on_a_new_waba_is_added_within_ten_seconds_however_slow_metas_template_list_is() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
        "name": "Kedai", "waba_id": "7200001", "phone_number_id": "8200001",
        "meta_access_token": "EAAG", "credits": 1}))
    .unwrap();
    let (tenant, _) = kirim::service::accounts::create_tenant(&deps, req)
        .await
        .expect("onboarded");
    deps.meta = Arc::new(SlowMeta(std::time::Duration::from_secs(3600)));
    let started = tokio::time::Instant::now();
    let req: kirim::service::numbers::NewNumber =
        serde_json::from_value(json!({"phone_number_id": "8200002", "waba_id": "7200002"}))
            .unwrap();
    let added = kirim::service::numbers::add(&deps, &tenant.id, req)
        .await
        .expect("added");
    assert_eq!(
        tokio::time::Instant::now() - started,
        templates::ONBOARDING_SYNC_TIME
    );
    assert_eq!(added.waba_id, "7200002");
    let listed = kirim::service::numbers::list(&deps, &tenant).await.unwrap();
    assert!(listed.iter().any(|n| n.phone_number_id == "8200002"));
}

/// A tenant store whose onboarding write lands but whose answer is lost (the SDK gave up),
/// and, when `.1`, whose tenants cannot be read either (storage throttled).
struct AnswerLost(Arc<dyn kirim::ports::TenantStore>, bool);

kirim_tests::pass_through! {
    impl TenantStore for AnswerLost via 0 {
        async fn onboard(
            &self,
            tenant: &kirim::ports::Tenant,
            display: Option<&str>,
            key: &kirim::ports::ApiKeyRecord,
            initial: Option<&kirim::ports::LedgerEntry>,
        ) -> Result<(), kirim::store_error::StoreError> {
            self.0.onboard(tenant, display, key, initial).await?;
            Err(kirim::store_error::StoreError::Unavailable(
                "the answer was lost".into(),
            ))
        }
        async fn get_tenant(
            &self,
            id: &kirim::domain::TenantId,
        ) -> Result<Option<kirim::ports::Tenant>, kirim::store_error::StoreError> {
            if self.1 {
                return Err(kirim::store_error::StoreError::Unavailable(
                    "throttled".into(),
                ));
            }
            self.0.get_tenant(id).await
        }
    }
}

#[tokio::test]
async fn an_onboarding_whose_write_landed_but_whose_answer_was_lost_keeps_its_token_and_answers_the_key(
) {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    deps.tenants = Arc::new(AnswerLost(deps.tenants.clone(), false));
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
        "name": "Kedai", "waba_id": "7100002", "phone_number_id": "8100002",
        "meta_access_token": "EAAG-kept", "credits": 1}))
    .unwrap();
    let (tenant, key) = kirim::service::accounts::create_tenant(&deps, req)
        .await
        .expect("the landed write is the tenant's");
    assert!(key.expose().starts_with("kirim_"));
    let token = deps
        .secrets
        .store()
        .get_secret(&tenant.meta_token_secret)
        .await
        .unwrap();
    assert_eq!(
        token.map(|t| t.expose().to_owned()),
        Some("EAAG-kept".to_owned()),
        "its Meta token is not deleted"
    );
}

/// An onboarding whose write failed and whose read-back failed too may or may not have
/// made the tenant: it answers an error, and keeps the Meta token (a tenant that exists
/// must not lose it); a retry is then told which tenant has the number (409).
#[tokio::test]
async fn an_onboarding_whose_write_cannot_be_read_back_keeps_its_token_and_a_retry_names_it() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    let inner = deps.tenants.clone();
    deps.tenants = Arc::new(AnswerLost(inner.clone(), true));
    let req = || -> kirim::service::accounts::NewTenant {
        serde_json::from_value(json!({
            "name": "Kedai", "waba_id": "7100003", "phone_number_id": "8100003",
            "meta_access_token": "EAAG-unknown", "credits": 1}))
        .unwrap()
    };
    assert!(kirim::service::accounts::create_tenant(&deps, req())
        .await
        .is_err());
    let owner = inner
        .tenant_by_phone_number_id("8100003")
        .await
        .unwrap()
        .expect("the write landed");
    let tenant = inner.get_tenant(&owner).await.unwrap().unwrap();
    let token = deps
        .secrets
        .store()
        .get_secret(&tenant.meta_token_secret)
        .await
        .unwrap();
    assert_eq!(
        token.map(|t| t.expose().to_owned()),
        Some("EAAG-unknown".to_owned()),
        "kept: the tenant exists"
    );
    deps.tenants = inner;
    match kirim::service::accounts::create_tenant(&deps, req()).await {
        Err(kirim::service::errors::ServiceError::Conflict(m)) => {
            assert!(m.contains(owner.as_str()), "{m}")
        }
        other => panic!("not a conflict naming the tenant: {:?}", other.map(|_| ())),
    }
}

fn stored_template(name: &str, at: chrono::DateTime<chrono::Utc>) -> CatalogueTemplate {
    CatalogueTemplate {
        waba_id: "7200001".into(),
        name: name.into(),
        language: "en_US".into(),
        category: TemplateCategory::Utility,
        status: TemplateStatus::Approved,
        quality: TemplateQuality::Green,
        body_parameters: 0,
        meta_id: None,
        updated_at: at,
        expires_at: None,
    }
}

/// Meta's list as it was when this sync read it (one template), while another sync,
/// which read a newer list, writes a template approved meanwhile.
struct ListWhileAnotherSyncWrites {
    clock: Arc<kirim_tests::ManualClock>,
    store: Arc<dyn kirim::ports::TemplateStore>,
}

#[async_trait]
impl MetaClient for ListWhileAnotherSyncWrites {
    async fn send_message(
        &self,
        _: &str,
        _: &Secret,
        _: &Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &Secret,
        _: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        self.clock.advance(chrono::Duration::seconds(1));
        let now = kirim::ports::Clock::now(&*self.clock);
        let newer = stored_template("approved_meanwhile", now);
        self.store
            .put_template(&newer)
            .await
            .expect("the other sync's write");
        // And it read `kept` paused since: this sync's older list says approved.
        let paused = CatalogueTemplate {
            status: TemplateStatus::Paused,
            ..stored_template("kept", now)
        };
        self.store
            .put_template(&paused)
            .await
            .expect("the other sync's write");
        Ok(MetaTemplatePage {
            templates: vec![MetaTemplate {
                name: "kept".into(),
                language: "en_US".into(),
                category: TemplateCategory::Utility,
                status: TemplateStatus::Approved,
                quality: TemplateQuality::Green,
                body_parameters: 0,
                meta_id: None,
            }],
            skipped: 0,
            after: None,
        })
    }
}

#[tokio::test]
async fn a_sync_never_removes_or_overwrites_a_template_another_sync_wrote_after_it_began() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
        "name": "Kedai", "waba_id": "7200001", "phone_number_id": "8200001",
        "meta_access_token": "EAAG", "credits": 1}))
    .unwrap();
    let (tenant, _) = kirim::service::accounts::create_tenant(&deps, req)
        .await
        .unwrap();
    let before = kirim::ports::Clock::now(&*clock) - chrono::Duration::hours(1);
    deps.templates
        .put_template(&stored_template("gone_at_meta", before))
        .await
        .unwrap();
    deps.meta = Arc::new(ListWhileAnotherSyncWrites {
        clock: clock.clone(),
        store: deps.templates.clone(),
    });
    let synced = templates::sync(&deps, &tenant).await.unwrap();
    // `kept` was read, but the other sync's write stands: not this sync's to count.
    assert_eq!((synced.synced, synced.removed), (0, 1), "{synced:?}");
    let names: Vec<String> = deps
        .templates
        .list_templates(
            "7200001",
            &TemplateQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .templates
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(
        names.contains(&"approved_meanwhile".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"kept".to_owned()) && !names.contains(&"gone_at_meta".to_owned()),
        "{names:?}"
    );
    let kept = deps
        .templates
        .get_template("7200001", "kept", "en_US")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kept.status,
        TemplateStatus::Paused,
        "the later-started sync's write stands"
    );
}
