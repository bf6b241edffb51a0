//! The contract of `OptOutStore` and `IdempotencyStore`, on the memory adapter and on
//! DynamoDB (moto): the same assertions for both.

use chrono::{Duration, Utc};
use kirim::domain::{
    MessageId, MessageRecord, MessageStatus, OptOut, OptOutKey, OptOutScope, OptOutSource, OptedIn,
    PhoneNumber, StatusEvent, TenantId,
};
use kirim::ports::*;
use kirim::store_error::StoreError;

use super::contract::{aws, memory, Ports as Stores};

async fn onboarded(p: &Stores, credits: i64) -> TenantId {
    let t = crate::contract::tenant(credits);
    p.tenants
        .create_tenant(&t, &crate::contract::key_for(&t), None)
        .await
        .unwrap();
    t.id
}

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).unwrap()
}

fn key(s: &str) -> OptOutKey {
    OptOutKey::parse(s).unwrap()
}

fn opt_out(p: &Stores, t: &TenantId, to: &str, scope: OptOutScope) -> OptOut {
    OptOut {
        tenant_id: t.clone(),
        phone: Some(phone(to)),
        user_id: None,
        scope,
        source: OptOutSource::Api,
        created_by: "key_1".into(),
        created_at: p.clock.now(),
        meta_timestamp: None,
    }
}

fn message(p: &Stores, t: &TenantId) -> (MessageRecord, LedgerEntry) {
    let now = p.clock.now();
    let id = MessageId::generate();
    let rec = MessageRecord {
        id: id.clone(),
        tenant_id: t.clone(),
        to: phone("+60123456789"),
        template: None,
        status: MessageStatus::Accepted,
        error: None,
        events: vec![StatusEvent {
            status: MessageStatus::Accepted,
            at: now,
        }],
        wamid: None,
        attempts: 0,
        price: 1,
        client_reference: None,
        created_at: now,
        updated_at: now,
        expires_at: Some(now.timestamp() + 3600),
        broadcast_id: None,
        send_at: None,
        from: None,
        pricing: None,
        carried_slot: None,
        claim: None,
        quality_counted: false,
        refunded: false,
        settled_at: None,
    };
    let debit = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        amount: -1,
        kind: LedgerKind::Debit,
        reference: None,
        message_id: Some(id),
        at: now,
        expires_at: Some(now.timestamp() + 3600),
    };
    (rec, debit)
}

fn key_record(
    p: &Stores,
    t: &TenantId,
    key: &str,
    fingerprint: &str,
    id: &MessageId,
) -> IdempotencyRecord {
    let now = p.clock.now();
    IdempotencyRecord {
        tenant_id: t.clone(),
        key_hash: kirim::domain::IdempotencyKey::parse(key).unwrap().hash(),
        fingerprint: fingerprint.into(),
        message_id: id.clone(),
        created_at: now,
        expires_at: Some(now.timestamp() + 86_400),
    }
}

async fn message_count(p: &Stores, t: &TenantId) -> usize {
    let q = MessageQuery {
        limit: 100,
        ..Default::default()
    };
    p.messages
        .list_messages(t, &q)
        .await
        .unwrap()
        .messages
        .len()
}

async fn credits(p: &Stores, t: &TenantId) -> i64 {
    p.tenants.get_tenant(t).await.unwrap().unwrap().credits
}

async fn an_opt_out_is_stored_read_back_and_removed_once(p: Stores) {
    let t = onboarded(&p, 0).await;
    let o = opt_out(&p, &t, "+60123450100", OptOutScope::All);
    assert_eq!(p.opt_outs.put_opt_out(&o).await.unwrap(), (o.clone(), true));
    assert_eq!(
        p.opt_outs.put_opt_out(&o).await.unwrap(),
        (o.clone(), false),
        "not new the second time"
    );
    assert_eq!(
        p.opt_outs.get_opt_out(&t, &o.key().unwrap()).await.unwrap(),
        Some(o.clone())
    );
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &key("+60123450101"))
            .await
            .unwrap(),
        None
    );
    // Another tenant sees nothing of it.
    let other = onboarded(&p, 0).await;
    assert_eq!(
        p.opt_outs
            .get_opt_out(&other, &o.key().unwrap())
            .await
            .unwrap(),
        None
    );
    assert!(!p
        .opt_outs
        .delete_opt_out(&other, &o.key().unwrap())
        .await
        .unwrap());
    assert!(p
        .opt_outs
        .delete_opt_out(&t, &o.key().unwrap())
        .await
        .unwrap());
    assert!(!p
        .opt_outs
        .delete_opt_out(&t, &o.key().unwrap())
        .await
        .unwrap());
    assert_eq!(
        p.opt_outs.get_opt_out(&t, &o.key().unwrap()).await.unwrap(),
        None
    );
}

async fn a_marketing_opt_out_never_narrows_an_all_one_but_all_widens_marketing(p: Stores) {
    let t = onboarded(&p, 0).await;
    let all = opt_out(&p, &t, "+60123450200", OptOutScope::All);
    p.opt_outs.put_opt_out(&all).await.unwrap();
    let mut narrower = opt_out(&p, &t, "+60123450200", OptOutScope::Marketing);
    narrower.source = OptOutSource::Meta131050;
    narrower.created_by = "meta".into();
    assert_eq!(
        p.opt_outs.put_opt_out(&narrower).await.unwrap().0,
        all,
        "the stored, wider opt-out is answered"
    );
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &all.key().unwrap())
            .await
            .unwrap(),
        Some(all)
    );

    let marketing = opt_out(&p, &t, "+60123450201", OptOutScope::Marketing);
    assert_eq!(
        p.opt_outs.put_opt_out(&marketing).await.unwrap().0,
        marketing
    );
    // Marketing again (e.g. a second 131050) simply records it again.
    assert_eq!(
        p.opt_outs.put_opt_out(&marketing).await.unwrap().0,
        marketing
    );
    let wider = opt_out(&p, &t, "+60123450201", OptOutScope::All);
    assert_eq!(
        p.opt_outs.put_opt_out(&wider).await.unwrap(),
        (wider.clone(), false)
    );
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &wider.key().unwrap())
            .await
            .unwrap(),
        Some(wider)
    );
}

async fn opt_outs_list_in_pages_with_a_cursor_and_only_the_tenants_own(p: Stores) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    p.opt_outs
        .put_opt_out(&opt_out(&p, &other, "+60123450300", OptOutScope::All))
        .await
        .unwrap();
    let phones = ["+60123450303", "+60123450301", "+60123450302"];
    for ph in phones {
        p.opt_outs
            .put_opt_out(&opt_out(&p, &t, ph, OptOutScope::All))
            .await
            .unwrap();
    }
    let first = p.opt_outs.list_opt_outs(&t, 2, None).await.unwrap();
    assert_eq!(first.opt_outs.len(), 2);
    let cursor = first.next_cursor.clone().expect("a second page");
    let second = p
        .opt_outs
        .list_opt_outs(&t, 2, Some(&cursor))
        .await
        .unwrap();
    assert_eq!(second.next_cursor, None, "no third page");
    let got: Vec<String> = first
        .opt_outs
        .iter()
        .chain(&second.opt_outs)
        .map(|o| o.key().unwrap().to_string())
        .collect();
    assert_eq!(
        got,
        vec!["+60123450301", "+60123450302", "+60123450303"],
        "each once, in phone-number order"
    );
    let exact = p.opt_outs.list_opt_outs(&t, 3, None).await.unwrap();
    assert_eq!(exact.opt_outs.len(), 3);
    assert_eq!(exact.next_cursor, None);
    assert_eq!(
        p.opt_outs
            .list_opt_outs(&t, 2, Some("not-a-cursor"))
            .await
            .unwrap_err(),
        StoreError::InvalidCursor
    );
    // A cursor of another listing (the tenant's messages) is no opt-out's position.
    let t = onboarded(&p, 10).await;
    for _ in 0..2 {
        let (m, d) = message(&p, &t);
        p.messages.insert_with_debit(&m, &d).await.unwrap();
    }
    let q = MessageQuery {
        limit: 1,
        ..Default::default()
    };
    let messages = p.messages.list_messages(&t, &q).await.unwrap();
    let cursor = messages.next_cursor.expect("a second page of messages");
    assert_eq!(
        p.opt_outs
            .list_opt_outs(&t, 2, Some(&cursor))
            .await
            .unwrap_err(),
        StoreError::InvalidCursor
    );
}

async fn an_idempotent_insert_writes_once_and_then_answers_the_existing_record(p: Stores) {
    let t = onboarded(&p, 5).await;
    let (m, d) = message(&p, &t);
    let k = key_record(&p, &t, "order-42", "fp-1", &m.id);
    assert_eq!(
        p.idempotency
            .insert_with_debit_once(&m, &d, &k)
            .await
            .unwrap(),
        IdempotentInsert::Inserted
    );
    assert_eq!(
        p.idempotency
            .get_idempotency(&t, &k.key_hash)
            .await
            .unwrap(),
        Some(k.clone())
    );
    // A second request with the key (another message id, another body): nothing written.
    let (m2, d2) = message(&p, &t);
    let k2 = key_record(&p, &t, "order-42", "fp-2", &m2.id);
    assert_eq!(
        p.idempotency
            .insert_with_debit_once(&m2, &d2, &k2)
            .await
            .unwrap(),
        IdempotentInsert::Existing(k.clone())
    );
    assert_eq!(p.messages.get_message(&t, &m2.id).await.unwrap(), None);
    assert_eq!(credits(&p, &t).await, 4, "one debit");
    assert_eq!(message_count(&p, &t).await, 1);
    // The same key in another tenant is another key.
    let other = onboarded(&p, 1).await;
    let (m3, d3) = message(&p, &other);
    let k3 = key_record(&p, &other, "order-42", "fp-1", &m3.id);
    assert_eq!(
        p.idempotency
            .insert_with_debit_once(&m3, &d3, &k3)
            .await
            .unwrap(),
        IdempotentInsert::Inserted
    );
}

async fn an_idempotent_insert_without_credits_writes_nothing_not_even_the_key(p: Stores) {
    let t = onboarded(&p, 0).await;
    let (m, d) = message(&p, &t);
    let k = key_record(&p, &t, "retry-after-top-up", "fp", &m.id);
    assert_eq!(
        p.idempotency
            .insert_with_debit_once(&m, &d, &k)
            .await
            .unwrap_err(),
        StoreError::InsufficientCredits
    );
    assert_eq!(
        p.idempotency
            .get_idempotency(&t, &k.key_hash)
            .await
            .unwrap(),
        None
    );
    assert_eq!(p.messages.get_message(&t, &m.id).await.unwrap(), None);
    let top = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        amount: 1,
        kind: LedgerKind::TopUp,
        reference: None,
        message_id: None,
        at: Utc::now(),
        expires_at: None,
    };
    p.ledger.top_up(&top).await.unwrap();
    assert_eq!(
        p.idempotency
            .insert_with_debit_once(&m, &d, &k)
            .await
            .unwrap(),
        IdempotentInsert::Inserted,
        "the retry after a top-up goes through"
    );
}

async fn an_expired_key_can_be_used_afresh(p: Stores) {
    let t = onboarded(&p, 5).await;
    let (m, d) = message(&p, &t);
    let k = key_record(&p, &t, "daily-report", "fp", &m.id);
    p.idempotency
        .insert_with_debit_once(&m, &d, &k)
        .await
        .unwrap();
    // 24 hours and a little later the key is forgotten.
    p.clock.advance(Duration::hours(24) + Duration::seconds(5));
    assert_eq!(
        p.idempotency
            .get_idempotency(&t, &k.key_hash)
            .await
            .unwrap(),
        None
    );
    let (m2, d2) = message(&p, &t);
    let k2 = key_record(&p, &t, "daily-report", "fp", &m2.id);
    assert_eq!(
        p.idempotency
            .insert_with_debit_once(&m2, &d2, &k2)
            .await
            .unwrap(),
        IdempotentInsert::Inserted
    );
}

async fn twenty_five_concurrent_inserts_with_one_key_make_one_message_and_one_debit(p: Stores) {
    let t = onboarded(&p, 100).await;
    let attempts: Vec<_> = (0..25)
        .map(|_| {
            let (m, d) = message(&p, &t);
            let k = key_record(&p, &t, "burst", "fp", &m.id);
            let store = p.idempotency.clone();
            tokio::spawn(
                async move { (m.id.clone(), store.insert_with_debit_once(&m, &d, &k).await) },
            )
        })
        .collect();
    let mut winners = Vec::new();
    let mut answered = Vec::new();
    for a in attempts {
        match a.await.unwrap() {
            (id, Ok(IdempotentInsert::Inserted)) => winners.push(id),
            (_, Ok(IdempotentInsert::Existing(r))) => answered.push(r.message_id),
            (_, Err(e)) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one insert wins");
    assert_eq!(answered.len(), 24);
    assert!(
        answered.iter().all(|id| id == &winners[0]),
        "all answered the winner"
    );
    assert_eq!(credits(&p, &t).await, 99, "one debit");
    assert_eq!(message_count(&p, &t).await, 1, "one message");
    let debits = p
        .ledger
        .entries(&t)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Debit)
        .count();
    assert_eq!(debits, 1);
}

async fn a_start_removes_only_a_stop_that_is_not_newer_and_a_stop_never_moves_time_back(p: Stores) {
    let t = onboarded(&p, 0).await;
    let stop = |at: i64| OptOut {
        source: OptOutSource::Keyword,
        created_by: "meta".into(),
        meta_timestamp: Some(at),
        ..opt_out(&p, &t, "+60123450400", OptOutScope::All)
    };
    let to = key("+60123450400");
    p.opt_outs.put_opt_out(&stop(200)).await.unwrap();
    // A late, older START does not undo the newer STOP.
    assert!(!p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &to, 100)
        .await
        .unwrap());
    // A late, older STOP leaves the newest STOP's time in place...
    let (kept, new) = p.opt_outs.put_opt_out(&stop(150)).await.unwrap();
    assert_eq!((kept.meta_timestamp, new), (Some(200), false));
    // ...so a START between the two still cannot undo it.
    assert!(!p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &to, 180)
        .await
        .unwrap());
    assert!(p.opt_outs.get_opt_out(&t, &to).await.unwrap().is_some());
    // A START of the same second applies (equal times apply in arrival order).
    assert!(p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &to, 200)
        .await
        .unwrap());
    assert_eq!(p.opt_outs.get_opt_out(&t, &to).await.unwrap(), None);
    // An opt-out stored without a time (before every one carried one): any START
    // removes it.
    p.opt_outs
        .put_opt_out(&opt_out(&p, &t, "+60123450400", OptOutScope::All))
        .await
        .unwrap();
    assert!(p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &to, 1)
        .await
        .unwrap());
}

/// One key's item folds every opt-out recorded under it: the widest scope, the newest
/// time. A marketing opt-out newer than an `all` one leaves `all` in place but moves its
/// time on; an older `all` widens a newer marketing one and keeps the newer time; so a
/// START or a `resume` removes it only when newer than every one of them.
async fn an_opt_out_keeps_the_widest_scope_and_the_newest_time_of_those_folded_in(p: Stores) {
    let t = onboarded(&p, 0).await;
    let to = key("+60123450700");
    let at = |scope: OptOutScope, source: OptOutSource, time: i64| OptOut {
        source,
        created_by: "meta".into(),
        meta_timestamp: Some(time),
        ..opt_out(&p, &t, "+60123450700", scope)
    };
    // A STOP at 100, then a 131050 marketing opt-out at 300.
    let stop = at(OptOutScope::All, OptOutSource::Keyword, 100);
    assert_eq!(
        p.opt_outs.put_opt_out(&stop).await.unwrap(),
        (stop.clone(), true)
    );
    let (stored, new) = p
        .opt_outs
        .put_opt_out(&at(OptOutScope::Marketing, OptOutSource::Meta131050, 300))
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(
        (stored.scope, stored.source, stored.meta_timestamp),
        (OptOutScope::All, OptOutSource::Keyword, Some(300)),
        "all, of its STOP, at the newer time"
    );
    assert_eq!(p.opt_outs.get_opt_out(&t, &to).await.unwrap(), Some(stored));
    // A START at 200 (after the STOP, before the marketing opt-out) removes nothing; a
    // marketing `resume` at 400 neither (the item is `all`).
    assert!(!p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &to, 200)
        .await
        .unwrap());
    assert!(!p
        .opt_outs
        .delete_opt_out_of_scope(&t, &to, OptOutScope::Marketing, 400)
        .await
        .unwrap());
    assert!(p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &to, 300)
        .await
        .unwrap());

    // A marketing preference at 500, then a late STOP of 450: widened to `all`, at 500.
    let pref = at(
        OptOutScope::Marketing,
        OptOutSource::MetaUserPreferences,
        500,
    );
    p.opt_outs.put_opt_out(&pref).await.unwrap();
    let (stored, _) = p
        .opt_outs
        .put_opt_out(&at(OptOutScope::All, OptOutSource::Keyword, 450))
        .await
        .unwrap();
    assert_eq!(
        (stored.scope, stored.source, stored.meta_timestamp),
        (OptOutScope::All, OptOutSource::Keyword, Some(500))
    );
    assert_eq!(p.opt_outs.get_opt_out(&t, &to).await.unwrap(), Some(stored));
    // Recording the same again changes nothing and is not new.
    let again = p.opt_outs.get_opt_out(&t, &to).await.unwrap().unwrap();
    assert_eq!(
        p.opt_outs.put_opt_out(&again).await.unwrap(),
        (again, false)
    );
}

/// A marketing `resume` removes a marketing opt-out only when not older than it: a
/// redelivered older `resume` leaves a newer `stop` in place.
async fn a_resume_removes_only_a_marketing_opt_out_not_newer_than_itself(p: Stores) {
    let t = onboarded(&p, 0).await;
    let to = key("+60123450710");
    let stop = OptOut {
        source: OptOutSource::MetaUserPreferences,
        created_by: "meta".into(),
        meta_timestamp: Some(200),
        ..opt_out(&p, &t, "+60123450710", OptOutScope::Marketing)
    };
    p.opt_outs.put_opt_out(&stop).await.unwrap();
    assert!(!p
        .opt_outs
        .delete_opt_out_of_scope(&t, &to, OptOutScope::Marketing, 100)
        .await
        .unwrap());
    assert_eq!(p.opt_outs.get_opt_out(&t, &to).await.unwrap(), Some(stop));
    assert!(p
        .opt_outs
        .delete_opt_out_of_scope(&t, &to, OptOutScope::Marketing, 200)
        .await
        .unwrap());
    assert_eq!(p.opt_outs.get_opt_out(&t, &to).await.unwrap(), None);
}

/// A START (or a marketing `resume`) is remembered: an opt-out Meta timed before it, put
/// after it, is not stored; one timed after it is. A marketing resume holds back only an
/// older marketing opt-out, never an `all` one. It expires with its class.
async fn an_opting_back_in_holds_back_an_older_opt_out_put_after_it(p: Stores) {
    let t = onboarded(&p, 0).await;
    let timed = |to: &str, scope, at: i64| OptOut {
        meta_timestamp: Some(at),
        source: OptOutSource::Keyword,
        ..opt_out(&p, &t, to, scope)
    };
    let k = key("+60123456701");
    let stop = timed("+60123456701", OptOutScope::All, 100);
    assert!(p.opt_outs.put_opt_out(&stop).await.unwrap().1);
    assert!(p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &k, 200)
        .await
        .unwrap());
    let (_, new) = p.opt_outs.put_opt_out(&stop).await.unwrap();
    assert!(!new, "the older STOP again: held back");
    assert_eq!(p.opt_outs.get_opt_out(&t, &k).await.unwrap(), None);
    let newer = timed("+60123456701", OptOutScope::All, 300);
    assert!(
        p.opt_outs.put_opt_out(&newer).await.unwrap().1,
        "a newer STOP"
    );
    assert!(p.opt_outs.get_opt_out(&t, &k).await.unwrap().is_some());
    // A START with nothing to remove is remembered all the same.
    let k2 = key("+60123456702");
    assert!(!p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &k2, 500)
        .await
        .unwrap());
    let late = timed("+60123456702", OptOutScope::Marketing, 400);
    assert!(!p.opt_outs.put_opt_out(&late).await.unwrap().1);
    assert_eq!(p.opt_outs.get_opt_out(&t, &k2).await.unwrap(), None);
    // A marketing resume holds back an older marketing stop, not an older `all` STOP.
    let k3 = key("+60123456703");
    assert!(!p
        .opt_outs
        .delete_opt_out_of_scope(&t, &k3, OptOutScope::Marketing, 500)
        .await
        .unwrap());
    let marketing = timed("+60123456703", OptOutScope::Marketing, 400);
    assert!(!p.opt_outs.put_opt_out(&marketing).await.unwrap().1);
    let all = timed("+60123456703", OptOutScope::All, 400);
    assert!(p.opt_outs.put_opt_out(&all).await.unwrap().1);
    // An opt-out without a time (stored before every one carried one) is never held back,
    // and a week on the START is forgotten.
    p.clock.advance(chrono::Duration::days(8));
    assert!(
        p.opt_outs
            .put_opt_out(&timed("+60123456702", OptOutScope::All, 450))
            .await
            .unwrap()
            .1
    );
    // A resume over an expired record (TTL deletion lags) starts a fresh week: the old
    // START is not carried into it.
    let k4 = key("+60123456704");
    assert!(!p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &k4, 1000)
        .await
        .unwrap());
    p.clock.advance(chrono::Duration::days(8));
    assert!(!p
        .opt_outs
        .delete_opt_out_of_scope(&t, &k4, OptOutScope::Marketing, 2000)
        .await
        .unwrap());
    assert!(
        p.opt_outs
            .put_opt_out(&timed("+60123456704", OptOutScope::All, 500))
            .await
            .unwrap()
            .1,
        "the expired START holds nothing back"
    );
}

/// A START is remembered under the key it came by; an opt-out Meta timed before it is
/// held back whichever of the user's keys the START came by: the key it is kept under, the
/// other key it records, or the key the caller says it is paired with now. Another user's
/// START holds nothing back, nor does the START a STOP came after.
async fn an_opting_back_in_by_the_users_other_key_holds_back_an_older_opt_out(p: Stores) {
    let t = onboarded(&p, 0).await;
    let user = key("MY.8000000090");
    assert!(!p
        .opt_outs
        .delete_opt_out_not_newer_than(&t, &user, 200)
        .await
        .unwrap());
    let timed = |to: &str, user_id: Option<&str>, at: i64| OptOut {
        user_id: user_id.and_then(kirim::domain::UserId::parse),
        meta_timestamp: Some(at),
        source: OptOutSource::Keyword,
        ..opt_out(&p, &t, to, OptOutScope::All)
    };
    // Naming both keys: held back by the user id's START, under either key.
    let both = timed("+60123450901", Some("MY.8000000090"), 100);
    assert!(!p.opt_outs.put_opt_out(&both).await.unwrap().1);
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &key("+60123450901"))
            .await
            .unwrap(),
        None
    );
    // Naming the phone only, paired with the user id: held back too.
    let phone_only = timed("+60123450902", None, 100);
    assert!(
        !p.opt_outs
            .put_opt_out_paired(&phone_only, Some(&user))
            .await
            .unwrap()
            .1
    );
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &key("+60123450902"))
            .await
            .unwrap(),
        None
    );
    // Paired with another user, or with none: stored.
    let other = key("MY.8000000091");
    assert!(
        p.opt_outs
            .put_opt_out_paired(&phone_only, Some(&other))
            .await
            .unwrap()
            .1
    );
    assert!(
        p.opt_outs
            .put_opt_out(&timed("+60123450903", None, 100))
            .await
            .unwrap()
            .1
    );
    // A STOP after the START: stored, whichever key it is paired with.
    assert!(
        p.opt_outs
            .put_opt_out_paired(
                &timed("+60123450904", Some("MY.8000000090"), 300),
                Some(&user)
            )
            .await
            .unwrap()
            .1
    );
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory_adapters {
            $( #[tokio::test] async fn $name() { super::$name(super::memory()).await } )*
        }
        mod aws_adapters_on_moto {
            $( #[tokio::test] async fn $name() { super::$name(super::aws().await).await } )*
        }
    };
}

async fn an_opt_out_by_user_id_is_stored_under_it_and_a_scoped_delete_removes_only_that_scope(
    p: Stores,
) {
    let t = onboarded(&p, 0).await;
    let by_id = OptOut {
        phone: None,
        user_id: kirim::domain::UserId::parse("MY.8000000001"),
        scope: OptOutScope::Marketing,
        ..opt_out(&p, &t, "+60123450600", OptOutScope::Marketing)
    };
    assert!(p.opt_outs.put_opt_out(&by_id).await.unwrap().1);
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &key("MY.8000000001"))
            .await
            .unwrap(),
        Some(by_id.clone())
    );
    // Neither a phone nor a user id: refused, nothing written.
    let nobody = OptOut {
        user_id: None,
        ..by_id.clone()
    };
    assert!(p.opt_outs.put_opt_out(&nobody).await.is_err());
    // A scoped delete of `all` leaves a marketing one; of `marketing` removes it.
    let k = key("MY.8000000001");
    assert!(!p
        .opt_outs
        .delete_opt_out_of_scope(&t, &k, OptOutScope::All, i64::MAX)
        .await
        .unwrap());
    assert!(p
        .opt_outs
        .delete_opt_out_of_scope(&t, &k, OptOutScope::Marketing, i64::MAX)
        .await
        .unwrap());
    assert_eq!(p.opt_outs.get_opt_out(&t, &k).await.unwrap(), None);
    // An `all` one is never removed by a marketing-scoped delete.
    let all = OptOut {
        scope: OptOutScope::All,
        ..by_id
    };
    p.opt_outs.put_opt_out(&all).await.unwrap();
    assert!(!p
        .opt_outs
        .delete_opt_out_of_scope(&t, &k, OptOutScope::Marketing, i64::MAX)
        .await
        .unwrap());
    assert!(p.opt_outs.get_opt_out(&t, &k).await.unwrap().is_some());
    // Listed after the phones (key order), with a cursor that reads back.
    p.opt_outs
        .put_opt_out(&opt_out(&p, &t, "+60123450601", OptOutScope::All))
        .await
        .unwrap();
    let first = p.opt_outs.list_opt_outs(&t, 1, None).await.unwrap();
    assert_eq!(first.opt_outs[0].phone, Some(phone("+60123450601")));
    let rest = p
        .opt_outs
        .list_opt_outs(&t, 1, first.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(rest.opt_outs[0].key(), Some(k));
}

/// A user id's opt-out copied under its paired phone only while it is stored: the check
/// travels with the write, so a copy racing the tenant's `DELETE` of the id never revives
/// the block under the phone.
async fn a_copy_under_the_phone_is_written_only_while_the_user_ids_opt_out_exists(p: Stores) {
    let t = onboarded(&p, 0).await;
    let id = key("MY.8000000002");
    let by_id = OptOut {
        phone: None,
        user_id: kirim::domain::UserId::parse("MY.8000000002"),
        meta_timestamp: Some(p.clock.now().timestamp()),
        ..opt_out(&p, &t, "+60123450610", OptOutScope::All)
    };
    p.opt_outs.put_opt_out(&by_id).await.unwrap();
    let copy = OptOut {
        phone: Some(phone("+60123450610")),
        ..by_id.clone()
    };
    let under_phone = key("+60123450610");
    // Stored: copied, and read back under the phone.
    assert!(p.opt_outs.put_opt_out_copy(&copy, &id).await.unwrap());
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &under_phone)
            .await
            .unwrap()
            .map(|o| o.scope),
        Some(OptOutScope::All)
    );
    // Removed (the id, then the phone), then a copy of what was read before: refused,
    // nothing written under the phone.
    assert!(p.opt_outs.delete_opt_out(&t, &id).await.unwrap());
    assert!(p.opt_outs.delete_opt_out(&t, &under_phone).await.unwrap());
    assert!(!p.opt_outs.put_opt_out_copy(&copy, &id).await.unwrap());
    assert_eq!(
        p.opt_outs.get_opt_out(&t, &under_phone).await.unwrap(),
        None
    );
    // Without a time (an opt-out from before times were kept), the same.
    let untimed = OptOut {
        meta_timestamp: None,
        ..copy.clone()
    };
    assert!(!p.opt_outs.put_opt_out_copy(&untimed, &id).await.unwrap());
    assert_eq!(
        p.opt_outs.get_opt_out(&t, &under_phone).await.unwrap(),
        None
    );
    // Another tenant's opt-out under the same id is not a source for this tenant's copy.
    let other = onboarded(&p, 0).await;
    p.opt_outs
        .put_opt_out(&OptOut {
            tenant_id: other.clone(),
            ..by_id.clone()
        })
        .await
        .unwrap();
    assert!(!p.opt_outs.put_opt_out_copy(&copy, &id).await.unwrap());
    assert_eq!(
        p.opt_outs.get_opt_out(&t, &under_phone).await.unwrap(),
        None
    );
}

/// A phone's opt-out copied under the user id Meta named with it is listed under that id:
/// pages follow the keys they are kept under, each once (the copy also names the phone).
async fn a_copy_under_a_user_id_is_listed_once_under_its_own_key(p: Stores) {
    let t = onboarded(&p, 0).await;
    let both = OptOut {
        user_id: kirim::domain::UserId::parse("MY.8000000003"),
        meta_timestamp: Some(p.clock.now().timestamp()),
        ..opt_out(&p, &t, "+60123450620", OptOutScope::All)
    };
    let (stored, _) = p.opt_outs.put_opt_out(&both).await.unwrap();
    assert!(p
        .opt_outs
        .put_opt_out_copy(&stored, &key("+60123450620"))
        .await
        .unwrap());
    let other = OptOut {
        phone: None,
        user_id: kirim::domain::UserId::parse("MY.8000000004"),
        ..both.clone()
    };
    p.opt_outs.put_opt_out(&other).await.unwrap();
    let copy = p
        .opt_outs
        .get_opt_out(&t, &key("MY.8000000003"))
        .await
        .unwrap()
        .expect("kept under the id");
    assert_eq!(
        copy.phone,
        Some(phone("+60123450620")),
        "and names the phone"
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = p
            .opt_outs
            .list_opt_outs(&t, 1, cursor.as_deref())
            .await
            .unwrap();
        seen.extend(page.opt_outs.into_iter().map(|o| (o.phone, o.user_id)));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// Several keys' opt-outs go in one write, whichever of them exist (a key named twice, or
/// with nothing under it, changes nothing), and only the tenant's own.
async fn opt_outs_under_several_keys_are_removed_at_once(p: Stores) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    for to in ["+60123456001", "+60123456002", "+60123456003"] {
        p.opt_outs
            .put_opt_out(&opt_out(&p, &t, to, OptOutScope::All))
            .await
            .unwrap();
    }
    p.opt_outs
        .put_opt_out(&opt_out(&p, &other, "+60123456001", OptOutScope::All))
        .await
        .unwrap();
    let key = |s: &str| OptOutKey::parse(s).unwrap();
    p.opt_outs
        .delete_opt_outs(
            &t,
            &[
                key("+60123456001"),
                key("+60123456002"),
                key("+60123456001"),
                key("+60123456999"),
                key("MY.7000000999"),
            ],
        )
        .await
        .unwrap();
    let get = |t: &TenantId, s: &str| {
        let p = &p;
        let t = t.clone();
        let k = key(s);
        async move { p.opt_outs.get_opt_out(&t, &k).await.unwrap().is_some() }
    };
    assert!(!get(&t, "+60123456001").await);
    assert!(!get(&t, "+60123456002").await);
    assert!(get(&t, "+60123456003").await, "a key not named stays");
    assert!(get(&other, "+60123456001").await, "another tenant's stays");
    p.opt_outs.delete_opt_outs(&t, &[]).await.unwrap();
    let many: Vec<OptOutKey> = (0..26).map(|i| key(&format!("+601234561{i:02}"))).collect();
    assert!(matches!(
        p.opt_outs.delete_opt_outs(&t, &many).await,
        Err(StoreError::Rejected(_))
    ));
    assert!(
        get(&t, "+60123456003").await,
        "a refused call removes nothing"
    );
}

/// A closed tenant takes no opt-out and no copy of one: its close-out gives its opt-outs
/// their TTL, and one written after (a webhook whose warm cache still saw the tenant open)
/// would be kept for ever. What it had stays (to expire with the close-out's TTL).
async fn a_closed_tenant_takes_no_opt_out_nor_a_copy_of_one(p: Stores) {
    let t = onboarded(&p, 5).await;
    let before = opt_out(&p, &t, "+60123450001", OptOutScope::All);
    assert!(p.opt_outs.put_opt_out(&before).await.unwrap().1);
    p.tenants
        .set_status(&t, TenantStatus::Closed, Some("bye"), p.clock.now())
        .await
        .unwrap();
    let mut late = opt_out(&p, &t, "+60123450002", OptOutScope::All);
    late.meta_timestamp = Some(p.clock.now().timestamp());
    assert_eq!(
        p.opt_outs.put_opt_out(&late).await.unwrap_err(),
        StoreError::Conflict(TENANT_CLOSED.into()),
        "refused, said so"
    );
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &key("+60123450002"))
            .await
            .unwrap(),
        None
    );
    // A copy of the one it had, under a user id: refused too.
    let copy = OptOut {
        user_id: Some(kirim::domain::UserId::parse("MY.123456").unwrap()),
        ..before.clone()
    };
    assert!(!p
        .opt_outs
        .put_opt_out_copy(&copy, &key("+60123450001"))
        .await
        .unwrap());
    assert_eq!(
        p.opt_outs
            .get_opt_out(&t, &OptOutKey::User(copy.user_id.clone().unwrap()))
            .await
            .unwrap(),
        None
    );
    assert!(p
        .opt_outs
        .get_opt_out(&t, &key("+60123450001"))
        .await
        .unwrap()
        .is_some());
    // Another tenant's (open) is stored as ever.
    let other = onboarded(&p, 5).await;
    assert!(
        p.opt_outs
            .put_opt_out(&opt_out(&p, &other, "+60123450002", OptOutScope::All))
            .await
            .unwrap()
            .1
    );
}

/// Numbers accepted before `+600…` was refused (stop 52) are still in the table: an
/// opt-out (kept for good), a message (two years), a campaign's list. Each reads back
/// whole, pages on past it and is removed by its key; a page holding one answered 500 on
/// DynamoDB, its cursor was refused and the campaign's list read as corrupt.
async fn numbers_kept_from_before_the_trunk_zero_rule_still_read_back_page_on_and_go(p: Stores) {
    let t = onboarded(&p, 10).await;
    let old = PhoneNumber::parse_stored("+600123456789").unwrap();
    assert!(
        PhoneNumber::parse(old.as_str()).is_err(),
        "refused as input now"
    );
    let mut o = opt_out(&p, &t, "+60123456701", OptOutScope::All);
    o.phone = Some(old.clone());
    p.opt_outs.put_opt_out(&o).await.unwrap();
    p.opt_outs
        .put_opt_out(&opt_out(&p, &t, "+60123456702", OptOutScope::All))
        .await
        .unwrap();
    let first = p.opt_outs.list_opt_outs(&t, 1, None).await.unwrap();
    assert_eq!(
        first.opt_outs,
        vec![o.clone()],
        "it sorts first and reads whole"
    );
    let rest = p
        .opt_outs
        .list_opt_outs(&t, 1, first.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(
        rest.opt_outs
            .iter()
            .map(|o| o.phone.as_ref().map(|p| p.as_str().to_owned()))
            .collect::<Vec<_>>(),
        vec![Some("+60123456702".to_owned())],
        "its cursor pages on"
    );
    let by_old = OptOutKey::parse_stored(old.as_str()).unwrap();
    assert_eq!(p.opt_outs.get_opt_out(&t, &by_old).await.unwrap(), Some(o));
    assert!(p.opt_outs.delete_opt_out(&t, &by_old).await.unwrap());
    assert_eq!(p.opt_outs.get_opt_out(&t, &by_old).await.unwrap(), None);

    let (mut rec, debit) = message(&p, &t);
    rec.to = old.clone();
    p.messages.insert_with_debit(&rec, &debit).await.unwrap();
    assert_eq!(
        p.messages.get_message(&t, &rec.id).await.unwrap(),
        Some(rec)
    );

    let now = p.clock.now();
    let b = crate::contract_broadcasts::running_broadcast(&t, now);
    let (_, mut debit) = message(&p, &t);
    debit.amount = -3;
    debit.message_id = None;
    let list = vec![old, phone("+60123456703")];
    p.broadcasts
        .create_broadcast(&b, &list, &debit)
        .await
        .unwrap();
    assert_eq!(
        p.broadcasts.broadcast_recipients(&t, &b.id).await.unwrap(),
        Some(list)
    );
}

/// When a user last opted back in under a key is read as recorded — the newest START and
/// marketing `resume`, each its own field, under that key only — and not once the record's
/// week is over.
async fn an_opting_back_in_is_read_under_its_own_key_until_its_record_expires(p: Stores) {
    let t = onboarded(&p, 0).await;
    let phone = key("+60123450951");
    assert_eq!(p.opt_outs.opted_in(&t, &phone).await.unwrap(), None);
    for at in [300, 200] {
        p.opt_outs
            .delete_opt_out_not_newer_than(&t, &phone, at)
            .await
            .unwrap();
    }
    p.opt_outs
        .delete_opt_out_of_scope(&t, &phone, OptOutScope::Marketing, 250)
        .await
        .unwrap();
    assert_eq!(
        p.opt_outs.opted_in(&t, &phone).await.unwrap(),
        Some(OptedIn {
            all_at: Some(300),
            marketing_at: Some(250),
        }),
        "the newest of each"
    );
    assert_eq!(
        p.opt_outs.opted_in(&t, &key("+60123450952")).await.unwrap(),
        None,
        "another key's"
    );
    p.clock.advance(Duration::days(8));
    assert_eq!(
        p.opt_outs.opted_in(&t, &phone).await.unwrap(),
        None,
        "its week is over"
    );
}

contract!(
    an_opting_back_in_is_read_under_its_own_key_until_its_record_expires,
    an_opting_back_in_by_the_users_other_key_holds_back_an_older_opt_out,
    numbers_kept_from_before_the_trunk_zero_rule_still_read_back_page_on_and_go,
    a_closed_tenant_takes_no_opt_out_nor_a_copy_of_one,
    opt_outs_under_several_keys_are_removed_at_once,
    a_copy_under_a_user_id_is_listed_once_under_its_own_key,
    a_copy_under_the_phone_is_written_only_while_the_user_ids_opt_out_exists,
    an_opting_back_in_holds_back_an_older_opt_out_put_after_it,
    an_opt_out_by_user_id_is_stored_under_it_and_a_scoped_delete_removes_only_that_scope,
    an_opt_out_is_stored_read_back_and_removed_once,
    a_start_removes_only_a_stop_that_is_not_newer_and_a_stop_never_moves_time_back,
    a_marketing_opt_out_never_narrows_an_all_one_but_all_widens_marketing,
    an_opt_out_keeps_the_widest_scope_and_the_newest_time_of_those_folded_in,
    a_resume_removes_only_a_marketing_opt_out_not_newer_than_itself,
    opt_outs_list_in_pages_with_a_cursor_and_only_the_tenants_own,
    an_idempotent_insert_writes_once_and_then_answers_the_existing_record,
    an_idempotent_insert_without_credits_writes_nothing_not_even_the_key,
    an_expired_key_can_be_used_afresh,
    twenty_five_concurrent_inserts_with_one_key_make_one_message_and_one_debit,
);
