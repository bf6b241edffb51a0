//! A campaign's recipients' opt-outs at its creation, on both backends: read for all of them
//! at once in batches (`ContactStore::found_among`), and checked in full for every
//! recipient with anything stored under any of its keys. A recipient is skipped exactly as
//! a send to it would be refused: by its other WhatsApp form, by the user id it is paired
//! with, by the template's category, wherever it is in a long list.

use kirim::config::Backend;
use kirim::domain::{OptOut, OptOutKey, OptOutScope, OptOutSource, PhoneNumber, TenantId, UserId};
use kirim_tests::{local_config, Onboarded, TestApp};
use serde_json::{json, Value};

async fn app(b: Backend) -> TestApp {
    kirim_tests::spawn_with(local_config(b).await).await
}

fn marketing() -> Value {
    json!({"name": "promo_sale", "language": "en_US", "category": "marketing",
           "components": [{"type": "body", "parameters": [{"type": "text", "text": "RAYA-30"}]}]})
}

fn utility() -> Value {
    json!({"name": "order_update", "language": "en_US", "category": "utility",
           "components": [{"type": "body", "parameters": [{"type": "text", "text": "ORDER-1"}]}]})
}

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).unwrap()
}

/// An opt-out stored under `key` alone, straight into the store (the API's `PUT` would
/// also copy it under the key's pairing, and a test of one path must not see the other).
async fn opted_out(app: &TestApp, t: &Onboarded, key: OptOutKey, scope: OptOutScope) {
    let (phone, user_id) = match key {
        OptOutKey::Phone(p) => (Some(p), None),
        OptOutKey::User(u) => (None, Some(u)),
    };
    let o = OptOut {
        tenant_id: TenantId::parse(&t.tenant_id).unwrap(),
        phone,
        user_id,
        scope,
        source: OptOutSource::Api,
        created_by: "key_1".into(),
        created_at: chrono::Utc::now(),
        meta_timestamp: None,
    };
    app.app.deps.opt_outs.put_opt_out(&o).await.unwrap();
}

/// A campaign of `template` to `recipients`, scheduled an hour ahead (its list is kept
/// until its fan-out): its (accepted, skipped_opted_out) and the recipients it kept, in
/// order.
async fn campaign(
    app: &TestApp,
    t: &Onboarded,
    template: Value,
    recipients: &[String],
) -> ((u64, u64), Vec<String>) {
    let send_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let res = app
        .http
        .post(app.url("/v1/broadcasts"))
        .bearer_auth(&t.key)
        .json(&json!({"template": template, "recipients": recipients,
                      "send_at": send_at.to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let counts = (
        body["accepted"].as_u64().unwrap(),
        body["skipped_opted_out"].as_u64().unwrap(),
    );
    let tid = TenantId::parse(&t.tenant_id).unwrap();
    let kept = app
        .app
        .deps
        .broadcasts
        .broadcast_recipients(&tid, body["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap_or_default()
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    (counts, kept)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn a_mexican_mobile_opted_out_only_under_its_other_whatsapp_form_is_skipped(b: Backend) {
    let app = app(b).await;
    let t = app.onboard(10).await;
    // Its STOP came from WhatsApp's id of it, `521…`; the campaign names it as dialled.
    let stop_form = OptOutKey::Phone(phone("+5215512347001"));
    opted_out(&app, &t, stop_form, OptOutScope::All).await;
    let list = strings(&["+60123457001", "+525512347001", "+60123457002"]);
    let (counts, kept) = campaign(&app, &t, marketing(), &list).await;
    assert_eq!(counts, (2, 1));
    assert_eq!(kept, strings(&["+60123457001", "+60123457002"]));
}

async fn a_recipient_opted_out_only_by_the_user_id_it_is_paired_with_is_skipped(b: Backend) {
    let app = app(b).await;
    let t = app.onboard(10).await;
    let tid = TenantId::parse(&t.tenant_id).unwrap();
    let user = UserId::parse("MY.5550007101").unwrap();
    app.app
        .deps
        .contacts
        .pair_user(&tid, &phone("+60123457101"), &user, None)
        .await
        .unwrap();
    opted_out(&app, &t, OptOutKey::User(user), OptOutScope::All).await;
    // A pairing alone blocks nothing.
    let other = UserId::parse("MY.5550007102").unwrap();
    app.app
        .deps
        .contacts
        .pair_user(&tid, &phone("+60123457102"), &other, None)
        .await
        .unwrap();
    let list = strings(&["+60123457101", "+60123457102", "+60123457103"]);
    let (counts, kept) = campaign(&app, &t, marketing(), &list).await;
    assert_eq!(counts, (2, 1));
    assert_eq!(kept, strings(&["+60123457102", "+60123457103"]));
}

async fn a_marketing_opt_out_skips_a_marketing_campaign_and_not_a_utility_one(b: Backend) {
    let app = app(b).await;
    let t = app.onboard(10).await;
    let stopped = OptOutKey::Phone(phone("+60123457201"));
    opted_out(&app, &t, stopped, OptOutScope::Marketing).await;
    let list = strings(&["+60123457201", "+60123457202"]);
    let (counts, kept) = campaign(&app, &t, utility(), &list).await;
    assert_eq!(counts, (2, 0), "a utility template reaches it");
    assert_eq!(kept, list);
    let (counts, kept) = campaign(&app, &t, marketing(), &list).await;
    assert_eq!(counts, (1, 1), "a marketing one does not");
    assert_eq!(kept, strings(&["+60123457202"]));
}

async fn opted_out_recipients_anywhere_in_a_long_list_are_skipped_and_the_rest_kept_in_order(
    b: Backend,
) {
    let app = app(b).await;
    let t = app.onboard(300).await;
    let tid = TenantId::parse(&t.tenant_id).unwrap();
    let list: Vec<String> = (0..250).map(|i| format!("+6012348{i:04}")).collect();
    // Past the first batch's 50 forms and the second's: by phone, and by a paired user id.
    for i in [0, 120, 249] {
        opted_out(
            &app,
            &t,
            OptOutKey::Phone(phone(&list[i])),
            OptOutScope::All,
        )
        .await;
    }
    let user = UserId::parse("MY.5550007301").unwrap();
    app.app
        .deps
        .contacts
        .pair_user(&tid, &phone(&list[180]), &user, None)
        .await
        .unwrap();
    opted_out(&app, &t, OptOutKey::User(user), OptOutScope::All).await;
    let (counts, kept) = campaign(&app, &t, marketing(), &list).await;
    assert_eq!(counts, (246, 4));
    let want: Vec<String> = list
        .iter()
        .enumerate()
        .filter(|(i, _)| ![0, 120, 180, 249].contains(i))
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(kept, want);
    assert_eq!(
        app.credits(&t.key).await,
        300 - 246,
        "the kept ones paid for"
    );
}

on_both_backends!(
    a_mexican_mobile_opted_out_only_under_its_other_whatsapp_form_is_skipped,
    a_recipient_opted_out_only_by_the_user_id_it_is_paired_with_is_skipped,
    a_marketing_opt_out_skips_a_marketing_campaign_and_not_a_utility_one,
    opted_out_recipients_anywhere_in_a_long_list_are_skipped_and_the_rest_kept_in_order,
);
