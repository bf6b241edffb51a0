//! The `ContactStore` contract on the memory adapter and on DynamoDB (moto): phone ↔
//! user-id pairings both ways, the newest inbound time kept whatever order webhooks
//! arrive in, expired records never answered; and the 24-hour customer-service window
//! checked on a send, with a test clock (local mode runs on the system clock).

use std::collections::{HashMap, HashSet};

use chrono::Duration;
use kirim::domain::{
    MessageStatus, OptOut, OptOutKey, OptOutScope, OptOutSource, PhoneNumber, UserId,
};
use kirim::ports::{Clock, Found};
use kirim::service::errors::ServiceError;
use kirim::service::{contacts, send};
use serde_json::json;

use super::contract::{aws, contract, memory, onboarded, Ports};

fn key(s: &str) -> OptOutKey {
    OptOutKey::parse(s).unwrap()
}

async fn a_pairing_is_found_from_either_key_and_only_in_its_own_tenant(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    let phone = PhoneNumber::parse("+60123450500").unwrap();
    let user = UserId::parse("MY.5550000500").unwrap();
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("+60123450500"))
            .await
            .unwrap(),
        None
    );
    p.contacts
        .pair_user(&t.id, &phone, &user, Some(p.clock.now().timestamp() + 100))
        .await
        .unwrap();
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("+60123450500"))
            .await
            .unwrap(),
        Some(key("MY.5550000500"))
    );
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("MY.5550000500"))
            .await
            .unwrap(),
        Some(key("+60123450500"))
    );
    assert_eq!(
        p.contacts
            .paired_key(&other.id, &key("+60123450500"))
            .await
            .unwrap(),
        None
    );
    // Expired (TTL deletion is lazy): not answered.
    p.clock.advance(Duration::seconds(101));
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("+60123450500"))
            .await
            .unwrap(),
        None
    );
}

async fn the_newest_inbound_time_is_kept_whatever_order_they_arrive_in_until_it_expires(p: Ports) {
    let t = onboarded(&p, 0).await;
    let user = key("+60123450501");
    // Stored in whole seconds, as DynamoDB keeps them.
    let now = chrono::DateTime::from_timestamp(p.clock.now().timestamp(), 0).unwrap();
    let (late, early) = (now - Duration::hours(1), now - Duration::hours(5));
    let exp = |at: chrono::DateTime<chrono::Utc>| (at + Duration::hours(24)).timestamp();
    p.contacts
        .record_inbound(&t.id, &t.phone_number_id, &user, late, exp(late))
        .await
        .unwrap();
    // An older message delivered late does not move the time back.
    p.contacts
        .record_inbound(&t.id, &t.phone_number_id, &user, early, exp(early))
        .await
        .unwrap();
    let last = |p: &Ports| {
        let (id, pnid, user) = (t.id.clone(), t.phone_number_id.clone(), user.clone());
        let contacts = p.contacts.clone();
        async move { contacts.last_inbound(&id, &pnid, &user).await.unwrap() }
    };
    assert_eq!(last(&p).await, Some(late));
    // Another number of the tenant knows nothing of it.
    assert_eq!(
        p.contacts
            .last_inbound(&t.id, "999999", &user)
            .await
            .unwrap(),
        None
    );
    p.clock.advance(Duration::hours(22));
    assert_eq!(last(&p).await, Some(late));
    p.clock.advance(Duration::hours(1));
    assert_eq!(
        last(&p).await,
        None,
        "expired 24 hours after the user wrote"
    );
}

async fn text(p: &Ports, tenant: &kirim::ports::Tenant, to: &str) -> Result<(), ServiceError> {
    let req: send::SendRequest =
        serde_json::from_value(json!({"to": to, "text": {"body": "Your parcel is here"}})).unwrap();
    send::send(p, &tenant.id, req).await.map(|_| ())
}

async fn credits(p: &Ports, t: &kirim::ports::Tenant) -> i64 {
    p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits
}

async fn a_session_text_is_allowed_for_24_hours_after_the_user_wrote_then_refused_with_nothing_debited(
    p: Ports,
) {
    let t = onboarded(&p, 5).await;
    let to = "+60123450502";
    // Never wrote: refused before anything is debited or stored.
    assert!(matches!(
        text(&p, &t, to).await,
        Err(ServiceError::OutsideCustomerServiceWindow)
    ));
    assert_eq!(credits(&p, &t).await, 5);
    contacts::user_wrote(&p, &t.id, &t.phone_number_id, &[key(to)], None)
        .await
        .unwrap();
    text(&p, &t, to).await.unwrap();
    assert_eq!(credits(&p, &t).await, 4);
    p.clock.advance(Duration::hours(24) - Duration::seconds(1));
    text(&p, &t, to).await.unwrap();
    assert_eq!(credits(&p, &t).await, 3);
    p.clock.advance(Duration::seconds(1));
    assert!(matches!(
        text(&p, &t, to).await,
        Err(ServiceError::OutsideCustomerServiceWindow)
    ));
    assert_eq!(credits(&p, &t).await, 3, "nothing debited");
    let q = kirim::ports::MessageQuery {
        status: Some(MessageStatus::Accepted),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        p.messages
            .list_messages(&t.id, &q)
            .await
            .unwrap()
            .messages
            .len(),
        2,
        "nothing stored for the refused send"
    );
}

async fn a_user_who_wrote_only_by_id_opens_the_window_of_the_phone_it_is_paired_with(p: Ports) {
    let t = onboarded(&p, 5).await;
    let to = "+60123450503";
    contacts::user_wrote(&p, &t.id, &t.phone_number_id, &[key("MY.5550000503")], None)
        .await
        .unwrap();
    assert!(matches!(
        text(&p, &t, to).await,
        Err(ServiceError::OutsideCustomerServiceWindow)
    ));
    contacts::learn_pairing(
        &p,
        &t.id,
        &PhoneNumber::parse(to).unwrap(),
        &UserId::parse("MY.5550000503").unwrap(),
    )
    .await
    .unwrap();
    text(&p, &t, to).await.unwrap();
    // A time Meta gives from before the window is not recorded at all.
    let old = p.clock.now().timestamp() - 25 * 3600;
    assert!(!contacts::user_wrote(
        &p,
        &t.id,
        &t.phone_number_id,
        &[key("+60123450504")],
        Some(old)
    )
    .await
    .unwrap());
}

async fn a_pairing_is_forgotten_only_while_it_names_the_key_given_is_the_older_and_only_its_own_half(
    p: Ports,
) {
    let t = onboarded(&p, 0).await;
    let phone = PhoneNumber::parse("+60123450505").unwrap();
    let first = UserId::parse("MY.5550000505").unwrap();
    let exp = p.clock.now().timestamp() + 100;
    p.contacts
        .pair_user(&t.id, &phone, &first, Some(exp))
        .await
        .unwrap();
    // The other key, and when this half was written (epoch milliseconds).
    let (other, at) = p
        .contacts
        .pairing(&t.id, &key("+60123450505"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other, key("MY.5550000505"));
    assert_eq!(at, Some(p.clock.now().timestamp_millis()));
    let at = at.unwrap();
    // Naming another key: the pairing stands.
    assert!(!p
        .contacts
        .unpair(&t.id, &key("+60123450505"), &key("MY.5550000506"), at + 1)
        .await
        .unwrap());
    // Not older than the half it is weighed against (written at the same time, or
    // since): it stands.
    assert!(!p
        .contacts
        .unpair(&t.id, &key("+60123450505"), &key("MY.5550000505"), at)
        .await
        .unwrap());
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("+60123450505"))
            .await
            .unwrap(),
        Some(key("MY.5550000505"))
    );
    assert!(p
        .contacts
        .unpair(&t.id, &key("+60123450505"), &key("MY.5550000505"), at + 1)
        .await
        .unwrap());
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("+60123450505"))
            .await
            .unwrap(),
        None
    );
    // The other half is its own item, untouched.
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("MY.5550000505"))
            .await
            .unwrap(),
        Some(key("+60123450505"))
    );
    // Gone already: nothing to forget.
    assert!(!p
        .contacts
        .unpair(&t.id, &key("+60123450505"), &key("MY.5550000505"), at + 1)
        .await
        .unwrap());
}

/// A phone's pairing is followed while it holds: its user id's half names it back, or that
/// half is the older (a pairing mid-write: its two halves are written one after the
/// other). Once the user id was paired with another phone since, the phone's half is
/// stale, and a removal's look forgets it.
async fn a_phones_pairing_holds_until_its_user_is_paired_with_another_phone_since(p: Ports) {
    let t = onboarded(&p, 0).await;
    let exp = Some(p.clock.now().timestamp() + 3600);
    let (p1, p2) = (
        PhoneNumber::parse("+60123450507").unwrap(),
        PhoneNumber::parse("+60123450508").unwrap(),
    );
    let user = UserId::parse("MY.5550000507").unwrap();
    // As the halves stand mid-write of the pairing (P2, U): P2's written, U's not yet
    // (U still names P1, written a second earlier). Built here by writing (P2, U) now and
    // (P1, U) with the clock a second back.
    p.contacts.pair_user(&t.id, &p2, &user, exp).await.unwrap();
    p.clock.advance(Duration::seconds(-1));
    p.contacts.pair_user(&t.id, &p1, &user, exp).await.unwrap();
    p.clock.advance(Duration::seconds(1));
    assert_eq!(
        contacts::paired_now(&p, &t.id, &key("+60123450508"))
            .await
            .unwrap(),
        Some(key("MY.5550000507")),
        "the newer half is followed"
    );
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("+60123450508"))
            .await
            .unwrap(),
        Some(key("MY.5550000507")),
        "and kept"
    );
    assert_eq!(
        contacts::paired_now(&p, &t.id, &key("+60123450507"))
            .await
            .unwrap(),
        Some(key("MY.5550000507")),
        "both halves agree"
    );
    // The user is paired with P2 since: P1's half is stale.
    p.clock.advance(Duration::seconds(1));
    p.contacts.pair_user(&t.id, &p2, &user, exp).await.unwrap();
    assert_eq!(
        contacts::paired_now(&p, &t.id, &key("+60123450507"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        p.contacts
            .paired_key(&t.id, &key("+60123450507"))
            .await
            .unwrap(),
        None,
        "forgotten"
    );
}

/// An opt-out under `key` (a phone's or a user id's), recorded as the API records one.
fn opt_out_of(p: &Ports, t: &kirim::domain::TenantId, key: &OptOutKey) -> OptOut {
    let (phone, user_id) = match key {
        OptOutKey::Phone(ph) => (Some(ph.clone()), None),
        OptOutKey::User(u) => (None, Some(u.clone())),
    };
    OptOut {
        tenant_id: t.clone(),
        phone,
        user_id,
        scope: OptOutScope::Marketing,
        source: OptOutSource::Api,
        created_by: "key_1".into(),
        created_at: p.clock.now(),
        meta_timestamp: None,
    }
}

/// What `found_among` answered: the keys found, each with whether an opt-out and the key
/// it is paired with.
fn answered(found: HashMap<OptOutKey, Found>) -> HashMap<OptOutKey, (bool, Option<OptOutKey>)> {
    found
        .into_iter()
        .map(|(k, f)| (k, (f.opt_out, f.paired)))
        .collect()
}

async fn found_among_answers_the_keys_with_an_opt_out_or_a_pairing_of_its_own_tenant_only(
    p: Ports,
) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    assert!(
        p.contacts.found_among(&t.id, &[]).await.unwrap().is_empty(),
        "no keys, none found"
    );
    // 130 phones (more than one call's 100 items, more than its 50 keys), each asked
    // twice, and two user ids.
    let phones: Vec<OptOutKey> = (0..130).map(|i| key(&format!("+6012346{i:04}"))).collect();
    let (opted_phone, paired_phone) = (phones[3].clone(), phones[77].clone());
    let late_phone = phones[129].clone();
    let (opted_user, paired_user) = (key("MY.5550000601"), key("MY.5550000602"));
    for k in [&opted_phone, &late_phone, &opted_user] {
        p.opt_outs
            .put_opt_out(&opt_out_of(&p, &t.id, k))
            .await
            .unwrap();
    }
    let (OptOutKey::Phone(ph), OptOutKey::User(u)) = (&paired_phone, &paired_user) else {
        unreachable!()
    };
    let exp = Some(p.clock.now().timestamp() + 100);
    p.contacts.pair_user(&t.id, ph, u, exp).await.unwrap();
    // A phone both opted out and paired (past the first call's 50 keys).
    let (both_phone, both_user) = (phones[120].clone(), key("MY.5550000604"));
    p.opt_outs
        .put_opt_out(&opt_out_of(&p, &t.id, &both_phone))
        .await
        .unwrap();
    let (OptOutKey::Phone(ph120), OptOutKey::User(u604)) = (&both_phone, &both_user) else {
        unreachable!()
    };
    p.contacts.pair_user(&t.id, ph120, u604, exp).await.unwrap();
    // Another tenant's opt-out and pairing under keys asked of this one.
    p.opt_outs
        .put_opt_out(&opt_out_of(&p, &other.id, &phones[10]))
        .await
        .unwrap();
    let OptOutKey::Phone(ph11) = &phones[11] else {
        unreachable!()
    };
    let other_user = kirim::domain::UserId::parse("MY.5550000603").unwrap();
    p.contacts
        .pair_user(&other.id, ph11, &other_user, exp)
        .await
        .unwrap();

    let mut asked: Vec<OptOutKey> = phones.iter().chain(phones.iter()).cloned().collect();
    asked.push(opted_user.clone());
    asked.push(key("MY.5550000699"));
    let found = answered(p.contacts.found_among(&t.id, &asked).await.unwrap());
    let want = HashMap::from([
        (opted_phone.clone(), (true, None)),
        (late_phone.clone(), (true, None)),
        (paired_phone.clone(), (false, Some(paired_user.clone()))),
        (both_phone.clone(), (true, Some(both_user.clone()))),
        (opted_user.clone(), (true, None)),
    ]);
    assert_eq!(
        found, want,
        "opt-outs and pairings (with the key paired) under both kinds of key"
    );
    // The pairing's other half, asked alone, is found too, with its phone.
    assert_eq!(
        answered(
            p.contacts
                .found_among(&t.id, std::slice::from_ref(&paired_user))
                .await
                .unwrap()
        ),
        HashMap::from([(paired_user.clone(), (false, Some(paired_phone.clone())))])
    );
    // The other tenant sees its own, not this one's.
    assert_eq!(
        answered(p.contacts.found_among(&other.id, &asked).await.unwrap()),
        HashMap::from([
            (phones[10].clone(), (true, None)),
            (phones[11].clone(), (false, Some(key("MY.5550000603")))),
        ])
    );
    // An expired pairing is not answered (TTL deletion is lazy), as `paired_key` answers
    // none; opt-outs have no TTL.
    p.clock.advance(Duration::seconds(101));
    let found = answered(p.contacts.found_among(&t.id, &asked).await.unwrap());
    assert_eq!(
        found,
        HashMap::from([
            (opted_phone, (true, None)),
            (late_phone, (true, None)),
            (both_phone, (true, None)),
            (opted_user, (true, None)),
        ]),
        "the expired pairings left out"
    );
}

async fn opted_out_among_answers_the_keys_with_an_opt_out_of_its_own_tenant_only_not_a_pairing(
    p: Ports,
) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    assert!(
        p.contacts
            .opted_out_among(&t.id, &[])
            .await
            .unwrap()
            .is_empty(),
        "no keys, none found"
    );
    // 230 user ids (more than two calls' 100 keys), each asked twice, and a phone.
    let users: Vec<OptOutKey> = (0..230).map(|i| key(&format!("MY.555001{i:04}"))).collect();
    let (first, late) = (users[0].clone(), users[229].clone());
    let phone = key("+60123466001");
    for k in [&first, &late, &phone] {
        p.opt_outs
            .put_opt_out(&opt_out_of(&p, &t.id, k))
            .await
            .unwrap();
    }
    // A pairing alone is not an opt-out.
    let (OptOutKey::User(u), OptOutKey::Phone(ph)) = (&users[100], key("+60123466002")) else {
        unreachable!()
    };
    p.contacts
        .pair_user(&t.id, &ph, u, Some(p.clock.now().timestamp() + 100))
        .await
        .unwrap();
    // Another tenant's opt-out under a key asked of this one.
    p.opt_outs
        .put_opt_out(&opt_out_of(&p, &other.id, &users[150]))
        .await
        .unwrap();

    let mut asked: Vec<OptOutKey> = users.iter().chain(users.iter()).cloned().collect();
    asked.push(phone.clone());
    assert_eq!(
        p.contacts.opted_out_among(&t.id, &asked).await.unwrap(),
        HashSet::from([first, late, phone]),
    );
    assert_eq!(
        p.contacts.opted_out_among(&other.id, &asked).await.unwrap(),
        HashSet::from([users[150].clone()]),
        "the other tenant sees its own"
    );
}

contract!(
    found_among_answers_the_keys_with_an_opt_out_or_a_pairing_of_its_own_tenant_only,
    opted_out_among_answers_the_keys_with_an_opt_out_of_its_own_tenant_only_not_a_pairing,
    a_phones_pairing_holds_until_its_user_is_paired_with_another_phone_since,
    a_pairing_is_forgotten_only_while_it_names_the_key_given_is_the_older_and_only_its_own_half,
    a_pairing_is_found_from_either_key_and_only_in_its_own_tenant,
    the_newest_inbound_time_is_kept_whatever_order_they_arrive_in_until_it_expires,
    a_session_text_is_allowed_for_24_hours_after_the_user_wrote_then_refused_with_nothing_debited,
    a_user_who_wrote_only_by_id_opens_the_window_of_the_phone_it_is_paired_with,
);
