//! A campaign's recipients' opt-outs at its creation, on both backends: read for all of them
//! at once in batches (`ContactStore::found_among`, then `opted_out_among` for the user ids
//! they are paired with), and checked in full for every recipient with an opt-out found
//! under any of its keys or their pairings. A recipient is skipped exactly as a send to it
//! would be refused: by its other WhatsApp form, by the user id it is paired with, by the
//! template's category, wherever it is in a long list; one with a pairing and no opt-out
//! costs no single read.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kirim::config::Backend;
use kirim::domain::{OptOut, OptOutKey, OptOutScope, OptOutSource, PhoneNumber, TenantId, UserId};
use kirim::ports::{ContactStore, Found};
use kirim::service::broadcasts::{self, CampaignIn};
use kirim::service::send::TemplateIn;
use kirim::store_error::StoreError;
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

/// The app's contact store, its reads counted: the single pairing reads (one for each
/// WhatsApp form a full check looks at: `optouts::check` reads every form's pairing) and
/// the batched look-ups.
struct Counted {
    inner: Arc<dyn ContactStore>,
    single: AtomicUsize,
    found_among: AtomicUsize,
    opted_out_among: AtomicUsize,
}

#[async_trait]
impl ContactStore for Counted {
    async fn pair_user(
        &self,
        tenant: &TenantId,
        phone: &PhoneNumber,
        user_id: &UserId,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.inner
            .pair_user(tenant, phone, user_id, expires_at)
            .await
    }
    async fn paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError> {
        self.single.fetch_add(1, Ordering::SeqCst);
        self.inner.paired_key(tenant, key).await
    }
    async fn pairing(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<(OptOutKey, Option<i64>)>, StoreError> {
        self.single.fetch_add(1, Ordering::SeqCst);
        self.inner.pairing(tenant, key).await
    }
    async fn unpair(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        other: &OptOutKey,
        newer: i64,
    ) -> Result<bool, StoreError> {
        self.inner.unpair(tenant, key, other, newer).await
    }
    async fn peek_paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError> {
        self.single.fetch_add(1, Ordering::SeqCst);
        self.inner.peek_paired_key(tenant, key).await
    }
    async fn found_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<HashMap<OptOutKey, Found>, StoreError> {
        self.found_among.fetch_add(1, Ordering::SeqCst);
        self.inner.found_among(tenant, keys).await
    }
    async fn opted_out_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<HashSet<OptOutKey>, StoreError> {
        self.opted_out_among.fetch_add(1, Ordering::SeqCst);
        self.inner.opted_out_among(tenant, keys).await
    }
    async fn record_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
        at: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .record_inbound(tenant, phone_number_id, key, at, expires_at)
            .await
    }
    async fn last_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.last_inbound(tenant, phone_number_id, key).await
    }
}

/// The reads a campaign's creation made: (single pairing reads, `found_among` calls,
/// `opted_out_among` calls).
type Reads = (usize, usize, usize);

/// [`campaign`], created by the service with the contact store's reads counted.
async fn counted_campaign(
    app: &TestApp,
    t: &Onboarded,
    template: Value,
    recipients: &[String],
) -> ((usize, usize), Vec<String>, Reads) {
    let tid = TenantId::parse(&t.tenant_id).unwrap();
    let counted = Arc::new(Counted {
        inner: app.app.deps.contacts.clone(),
        single: AtomicUsize::new(0),
        found_among: AtomicUsize::new(0),
        opted_out_among: AtomicUsize::new(0),
    });
    let mut deps = app.app.deps.clone();
    deps.contacts = counted.clone();
    let template: TemplateIn = serde_json::from_value(template).unwrap();
    let send_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let c = CampaignIn {
        send_at: Some(send_at.to_rfc3339()),
        ..CampaignIn::default()
    };
    let b = broadcasts::create_campaign(&deps, &tid, template, recipients.to_vec(), c)
        .await
        .unwrap();
    let kept = app
        .app
        .deps
        .broadcasts
        .broadcast_recipients(&tid, &b.id)
        .await
        .unwrap()
        .unwrap_or_default()
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    let reads = (
        counted.single.load(Ordering::SeqCst),
        counted.found_among.load(Ordering::SeqCst),
        counted.opted_out_among.load(Ordering::SeqCst),
    );
    ((b.accepted, b.skipped_opted_out), kept, reads)
}

async fn paired(app: &TestApp, t: &Onboarded, phone_: &str, user: &str) {
    let tid = TenantId::parse(&t.tenant_id).unwrap();
    app.app
        .deps
        .contacts
        .pair_user(&tid, &phone(phone_), &UserId::parse(user).unwrap(), None)
        .await
        .unwrap();
}

async fn paired_recipients_whose_user_ids_have_not_opted_out_are_accepted_with_no_single_read(
    b: Backend,
) {
    let app = app(b).await;
    let t = app.onboard(200).await;
    let list: Vec<String> = (0..200).map(|i| format!("+6012351{i:04}")).collect();
    for (i, p) in list.iter().enumerate() {
        paired(&app, &t, p, &format!("MY.555001{i:04}")).await;
    }
    let (counts, kept, reads) = counted_campaign(&app, &t, marketing(), &list).await;
    assert_eq!(counts, (200, 0));
    assert_eq!(kept, list);
    assert_eq!(
        reads,
        (0, 1, 1),
        "the forms, then their 200 pairings' user ids, each in batches; no single read"
    );
    assert_eq!(app.credits(&t.key).await, 0, "all 200 paid for");
}

async fn a_recipient_paired_with_a_user_who_opted_out_is_skipped_past_the_first_batches_and_only_it_is_checked_in_full(
    b: Backend,
) {
    let app = app(b).await;
    let t = app.onboard(200).await;
    // 150 paired recipients: their user ids are two batches of the second look-up (100
    // keys a call on DynamoDB, in order), and their forms three of the first (50 keys).
    let list: Vec<String> = (0..150).map(|i| format!("+6012352{i:04}")).collect();
    let user = |i: usize| format!("MY.555002{i:04}");
    for (i, p) in list.iter().enumerate() {
        paired(&app, &t, p, &user(i)).await;
    }
    for i in [0, 120] {
        let u = OptOutKey::User(UserId::parse(&user(i)).unwrap());
        opted_out(&app, &t, u, OptOutScope::All).await;
    }
    let (counts, kept, reads) = counted_campaign(&app, &t, marketing(), &list).await;
    assert_eq!(counts, (148, 2), "skipped_opted_out counts them");
    let want: Vec<String> = list
        .iter()
        .enumerate()
        .filter(|(i, _)| ![0, 120].contains(i))
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(kept, want);
    assert_eq!(reads, (2, 1, 1), "only the two checked in full");
}

async fn a_mix_of_250_recipients_is_decided_as_their_single_checks_would_with_single_reads_only_where_an_opt_out_was_found(
    b: Backend,
) {
    let app = app(b).await;
    let t = app.onboard(300).await;
    let mut list: Vec<String> = (0..250).map(|i| format!("+6012353{i:04}")).collect();
    // A Mexican mobile as dialled, its other form (as WhatsApp names it) paired with a
    // user id that opted out.
    list[100] = "+525512353100".into();
    let user = |i: usize| format!("MY.555003{i:04}");
    paired(&app, &t, "+5215512353100", &user(100)).await;
    // Opted out by phone: of everything, and of marketing alone (a utility template
    // reaches it, after its full check).
    opted_out(
        &app,
        &t,
        OptOutKey::Phone(phone(&list[5])),
        OptOutScope::All,
    )
    .await;
    let marketing_only = OptOutKey::Phone(phone(&list[140]));
    opted_out(&app, &t, marketing_only, OptOutScope::Marketing).await;
    // Paired with user ids that opted out: of everything (past the first batches), and of
    // marketing alone.
    for (i, scope) in [
        (100, OptOutScope::All),
        (60, OptOutScope::All),
        (249, OptOutScope::All),
        (200, OptOutScope::Marketing),
    ] {
        if i != 100 {
            paired(&app, &t, &list[i], &user(i)).await;
        }
        let u = OptOutKey::User(UserId::parse(&user(i)).unwrap());
        opted_out(&app, &t, u, scope).await;
    }
    // Every third other one paired with a user id that has not opted out.
    for i in (0..250).filter(|i| i % 3 == 0 && ![60, 249, 200, 100].contains(i)) {
        paired(&app, &t, &list[i], &user(i)).await;
    }
    let (counts, kept, reads) = counted_campaign(&app, &t, utility(), &list).await;
    assert_eq!(counts, (246, 4));
    let want: Vec<String> = list
        .iter()
        .enumerate()
        .filter(|(i, _)| ![5, 60, 100, 249].contains(i))
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(kept, want);
    // One form each for 5, 140, 60, 249 and 200; both of the Mexican one's.
    assert_eq!(
        reads,
        (7, 1, 1),
        "single reads only where an opt-out was found"
    );
    assert_eq!(app.credits(&t.key).await, 300 - 246);
}

on_both_backends!(
    a_mexican_mobile_opted_out_only_under_its_other_whatsapp_form_is_skipped,
    a_recipient_opted_out_only_by_the_user_id_it_is_paired_with_is_skipped,
    a_marketing_opt_out_skips_a_marketing_campaign_and_not_a_utility_one,
    opted_out_recipients_anywhere_in_a_long_list_are_skipped_and_the_rest_kept_in_order,
    paired_recipients_whose_user_ids_have_not_opted_out_are_accepted_with_no_single_read,
    a_recipient_paired_with_a_user_who_opted_out_is_skipped_past_the_first_batches_and_only_it_is_checked_in_full,
    a_mix_of_250_recipients_is_decided_as_their_single_checks_would_with_single_reads_only_where_an_opt_out_was_found,
);
