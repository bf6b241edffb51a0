//! The cost harness's counting proxy (`kirim_infra::cost`, `scripts/bench-cost`) in front
//! of moto: each call counted under its phase with the capacity units DynamoDB would bill
//! for the sizes of the items involved. (The harness itself is not run in CI.)

use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Put, ReturnConsumedCapacity, TransactWriteItem,
};
use kirim_infra::cost::{CountingProxy, Units};
use kirim_tests::{moto_endpoint, moto_sdk, unique_stack};

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

#[tokio::test]
async fn the_cost_proxy_counts_each_call_with_the_units_its_item_sizes_cost() {
    let stack = kirim_infra::bootstrap::ensure_stack(&moto_sdk().await, &unique_stack())
        .await
        .expect("stack in moto");
    let proxy = CountingProxy::start(&moto_endpoint().await).await.unwrap();
    let db = aws_sdk_dynamodb::Client::new(
        &kirim_infra::local::emulator_sdk_config(Some(&proxy.url)).await,
    );
    let table = stack.table.as_str();
    proxy.set_phase("test");

    // 2 + 6 + 2 + 1 + 4 + 2,500 bytes: 3 KB started.
    let big = "x".repeat(2500);
    db.put_item()
        .table_name(table)
        .item("pk", s("COST#x"))
        .item("sk", s("A"))
        .item("blob", s(&big))
        .send()
        .await
        .unwrap();
    // A small item in the index: 1 for the item, 1 for its index entry.
    db.put_item()
        .table_name(table)
        .item("pk", s("COST#y"))
        .item("sk", s("A"))
        .item("gsi1pk", s("G"))
        .item("gsi1sk", s("1"))
        .send()
        .await
        .unwrap();
    // Refused: it still costs the existing item's size.
    let refused = db
        .put_item()
        .table_name(table)
        .item("pk", s("COST#x"))
        .item("sk", s("A"))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await;
    assert!(refused.is_err());
    let key = |pk: &str| {
        [("pk".to_owned(), s(pk)), ("sk".to_owned(), s("A"))]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>()
    };
    db.get_item()
        .table_name(table)
        .set_key(Some(key("COST#x")))
        .consistent_read(true)
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap();
    db.get_item()
        .table_name(table)
        .set_key(Some(key("COST#x")))
        .send()
        .await
        .unwrap();
    // A transaction: each item twice, the condition check included (2 × 1 + 2 × 3).
    db.transact_write_items()
        .transact_items(
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(table)
                        .item("pk", s("COST#z"))
                        .item("sk", s("A"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .transact_items(
            TransactWriteItem::builder()
                .condition_check(
                    ConditionCheck::builder()
                        .table_name(table)
                        .set_key(Some(key("COST#x")))
                        .condition_expression("attribute_exists(pk)")
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    proxy.set_phase("after");

    let tally = proxy.take();
    let ops = &tally["test"];
    // One call at a time: each its own round trip.
    let unit = |calls, wcu, rcu, gsi_wcu| Units {
        calls,
        wcu,
        rcu,
        gsi_wcu,
        round_trips: calls,
    };
    assert_eq!(ops["DynamoDB.PutItem"], unit(3, 3.0 + 2.0 + 3.0, 0.0, 1.0));
    assert_eq!(ops["DynamoDB.GetItem"], unit(2, 0.0, 1.0 + 0.5, 0.0));
    assert_eq!(
        ops["DynamoDB.TransactWriteItems"],
        unit(1, 2.0 * 1.0 + 2.0 * 3.0, 0.0, 0.0)
    );
    assert!(
        !tally.contains_key("after"),
        "nothing after the phase: {tally:?}"
    );
}

/// A DynamoDB store on a fresh stack in moto, its calls counted by the proxy.
async fn store_behind_proxy() -> (kirim::adapters::aws::DynamoStore, CountingProxy) {
    let stack = kirim_infra::bootstrap::ensure_stack(&moto_sdk().await, &unique_stack())
        .await
        .expect("stack in moto");
    let proxy = CountingProxy::start(&moto_endpoint().await).await.unwrap();
    let db = aws_sdk_dynamodb::Client::new(
        &kirim_infra::local::emulator_sdk_config(Some(&proxy.url)).await,
    );
    let store = kirim::adapters::aws::DynamoStore::new(
        db,
        stack.table,
        std::sync::Arc::new(kirim::ports::SystemClock),
    );
    (store, proxy)
}

/// The reads this issue made cheaper, counted on the wire (issue #13): the reads that may
/// be a moment behind are eventually consistent (half a unit each), and indexing a wamid
/// learns whether statuses were kept for it from the item as it was, not from a read.
#[tokio::test]
async fn the_reads_that_may_lag_cost_half_a_unit_and_indexing_a_wamid_reads_nothing() {
    use kirim::domain::{MessageId, OptOutKey, PhoneNumber, TenantId};
    use kirim::ports::{ContactStore, MessageStore, OptOutStore};

    let (store, proxy) = store_behind_proxy().await;
    let t = TenantId::generate();
    let phone = OptOutKey::Phone(PhoneNumber::parse("+60123450999").unwrap());
    let m = MessageId::generate();

    proxy.set_phase("peek");
    store.peek_opt_out(&t, &phone).await.unwrap();
    store.peek_paired_key(&t, &phone).await.unwrap();
    store.peek_message(&t, &m).await.unwrap();
    proxy.set_phase("get");
    store.get_opt_out(&t, &phone).await.unwrap();
    proxy.set_phase("index");
    let kept = store
        .index_wamid(&t, &m, &format!("wamid.{}", ulid::Ulid::new()), None)
        .await
        .unwrap();
    assert!(!kept, "nothing was kept for it");
    proxy.set_phase("after");

    let tally = proxy.take();
    let get = |phase: &str| tally[phase]["DynamoDB.GetItem"];
    assert_eq!((get("peek").calls, get("peek").rcu), (3, 1.5));
    assert_eq!((get("get").calls, get("get").rcu), (1, 1.0), "consistent");
    let index = &tally["index"];
    assert_eq!(index.len(), 1, "one call: {index:?}");
    assert_eq!(index["DynamoDB.UpdateItem"].wcu, 1.0, "no read before it");
}

/// A login's lookup of an email without a user makes the same reads, one after the other,
/// as one with a user (two consistent `GetItem`s): its answer time does not tell whether
/// an email has a user.
#[tokio::test]
async fn looking_up_an_unknown_email_reads_as_much_as_a_known_one() {
    use kirim::ports::UserStore;
    let (store, proxy) = store_behind_proxy().await;
    let t = crate::contract::tenant(0);
    let email = format!(
        "u{}@example.com",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let user = kirim::ports::UserRecord {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        email: email.clone(),
        role: kirim::domain::Role::Operator,
        password_hash: "$argon2id$not-a-real-hash".into(),
        totp_secret: None,
        totp_confirmed: false,
        last_totp_step: 0,
        created_at: chrono::Utc::now(),
        password_version: 0,
    };
    store.create_user(&user).await.unwrap();
    proxy.set_phase("known");
    assert!(store.user_by_email(&email).await.unwrap().is_some());
    proxy.set_phase("unknown");
    assert!(store
        .user_by_email("nobody@example.com")
        .await
        .unwrap()
        .is_none());
    proxy.set_phase("after");
    let tally = proxy.take();
    let reads = |phase: &str| {
        let g = &tally[phase]["DynamoDB.GetItem"];
        (g.calls, g.rcu, g.round_trips, tally[phase].len())
    };
    assert_eq!(reads("unknown"), reads("known"), "{tally:?}");
}

/// The tenant item carries no WABA index entry any more (issue #13): each debit rewrites
/// the tenant item, which with an entry (the index projects ALL) was an index write too.
/// The tenant is found by its WABA through its number's item, stored at onboarding.
#[tokio::test]
async fn a_debit_writes_no_index_entry_and_the_tenant_is_still_found_by_its_waba() {
    use kirim::ports::{MessageStore, TenantStore};

    let (store, proxy) = store_behind_proxy().await;
    let t = crate::contract::tenant(10);
    proxy.set_phase("onboard");
    store
        .create_tenant(&t, &crate::contract::key_for(&t), None)
        .await
        .unwrap();
    proxy.set_phase("debit");
    let (m, debit) = crate::contract::message_for(&t.id, chrono::Utc::now());
    store.insert_with_debit(&m, &debit).await.unwrap();
    proxy.set_phase("after");

    let tally = proxy.take();
    let debit = &tally["debit"]["DynamoDB.TransactWriteItems"];
    assert_eq!(debit.gsi_wcu, 0.0, "no index entry rewritten: {debit:?}");
    assert_eq!(
        tally["onboard"]["DynamoDB.TransactWriteItems"].gsi_wcu, 1.0,
        "written once, on the number's item"
    );
    assert_eq!(store.tenants_by_waba(&t.waba_id).await.unwrap(), vec![t.id]);
}

/// The warm read cache's refreshes on the wire, through the deps as Lambda builds them
/// (issue #13): the catalogue template, the status-callback setting, the sender number and
/// the phone number's owner are read eventually consistent (half a unit each: a change
/// to them bites within 5 s and DynamoDB's replication lag), the API key by its hash and
/// the tenant for access strongly consistent (a unit each: a revocation or a suspension
/// bites within 5 s). A number or an owner the lagging read does not find is read again
/// consistently. Fails if any one of them is flipped.
#[tokio::test]
async fn the_warm_cache_refreshes_what_may_lag_eventually_consistent_and_keys_and_tenants_consistently(
) {
    use std::sync::Arc;

    use kirim::domain::{TemplateCategory, TemplateQuality, TemplateStatus};
    use kirim::ports::{
        CatalogueTemplate, SecretStore, StatusCallback, StatusCallbackStore, TemplateStore,
        TenantStore,
    };

    let (store, proxy) = store_behind_proxy().await;
    let store = Arc::new(store);
    let t = crate::contract::tenant(10);
    let key = crate::contract::key_for(&t);
    store.create_tenant(&t, &key, None).await.unwrap();
    store
        .put_template(&CatalogueTemplate {
            waba_id: t.waba_id.clone(),
            name: "order_update".into(),
            language: "en".into(),
            category: TemplateCategory::Utility,
            status: TemplateStatus::Approved,
            quality: TemplateQuality::Green,
            body_parameters: 0,
            meta_id: None,
            updated_at: chrono::Utc::now(),
            expires_at: None,
        })
        .await
        .unwrap();
    store
        .put_status_callback(&StatusCallback {
            tenant_id: t.id.clone(),
            url: "https://example.com/kirim".into(),
            secret_name: "callback".into(),
            secret_version: None,
            updated_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let clock = kirim_tests::ManualClock::new();
    let secrets: Arc<dyn SecretStore> = Arc::new(kirim::adapters::memory::MemorySecrets::default());
    let cached = crate::caches::deps(store, secrets, clock.clone(), kirim::wiring::READ_CACHE_TTL);
    let unknown = format!("{}", t.phone_number_id.parse::<u32>().unwrap() + 1);

    // Each read of the cache, on its own phase: first cold, then after the TTL (the
    // refreshes), then once within it (nothing read).
    let reads = |round: &'static str| {
        let (cached, t, key) = (&cached, &t, &key);
        let proxy = &proxy;
        async move {
            proxy.set_phase(&format!("{round} template"));
            let found = cached
                .templates
                .get_template(&t.waba_id, "order_update", "en");
            assert!(found.await.unwrap().is_some());
            proxy.set_phase(&format!("{round} callback"));
            let found = cached.status_callbacks.get_status_callback(&t.id);
            assert!(found.await.unwrap().is_some());
            proxy.set_phase(&format!("{round} number"));
            let found = cached.numbers.get_phone_number(&t.id, &t.phone_number_id);
            assert!(found.await.unwrap().is_some(), "stored at onboarding");
            proxy.set_phase(&format!("{round} owner"));
            let found = cached.tenants.tenant_by_phone_number_id(&t.phone_number_id);
            assert_eq!(found.await.unwrap().as_ref(), Some(&t.id));
            proxy.set_phase(&format!("{round} key"));
            let found = cached.tenants.api_key_by_hash(&key.key_hash);
            assert!(found.await.unwrap().is_some());
            proxy.set_phase(&format!("{round} tenant"));
            let found = cached.tenants.tenant_for_access(&t.id);
            assert!(found.await.unwrap().is_some());
        }
    };
    reads("cold").await;
    clock.advance(chrono::Duration::from_std(kirim::wiring::READ_CACHE_TTL).unwrap());
    reads("refresh").await;
    reads("warm").await;
    proxy.set_phase("missing number");
    let missing = cached.numbers.get_phone_number(&t.id, &unknown);
    assert!(missing.await.unwrap().is_none());
    proxy.set_phase("missing owner");
    let missing = cached.tenants.tenant_by_phone_number_id(&unknown);
    assert!(missing.await.unwrap().is_none());
    proxy.set_phase("after");

    let tally = proxy.take();
    let get = |phase: &str| {
        let ops = &tally[phase];
        assert_eq!(ops.len(), 1, "{phase}: only a GetItem: {ops:?}");
        // A tenant is read with its credit lanes (A80): one query of the same units.
        let op = if phase.ends_with("tenant") {
            "DynamoDB.Query"
        } else {
            "DynamoDB.GetItem"
        };
        let get = ops[op];
        (get.calls, get.rcu)
    };
    for round in ["cold", "refresh"] {
        for (item, units) in [
            ("template", 0.5),
            ("callback", 0.5),
            ("number", 0.5),
            ("owner", 0.5),
            ("key", 1.0),
            ("tenant", 1.0),
        ] {
            let phase = format!("{round} {item}");
            assert_eq!(get(&phase), (1, units), "{phase}");
        }
    }
    assert!(
        tally.keys().all(|p| !p.starts_with("warm")),
        "nothing read within the TTL: {tally:?}"
    );
    assert_eq!(
        get("missing number"),
        (2, 0.5 + 1.0),
        "confirmed consistently"
    );
    assert_eq!(
        get("missing owner"),
        (2, 0.5 + 1.0),
        "confirmed consistently"
    );
    assert!(!tally.contains_key("after"));
}

/// A send's audit event is two plain conditional writes of one unit each (issue #13): the
/// event, then its head, where a transaction of both cost 4 units. The second append, after
/// the head this process wrote, reads nothing.
#[tokio::test]
async fn an_audit_append_is_two_plain_writes_of_one_unit_each() {
    use kirim::adapters::memory::MemorySecrets;
    use kirim::ports::SecretStore;
    use std::sync::Arc;

    let (store, proxy) = store_behind_proxy().await;
    let secrets: Arc<dyn SecretStore> = Arc::new(MemorySecrets::default());
    let settings = kirim::config::Settings::default();
    secrets
        .put_secret(
            &settings.audit_key_secret,
            &kirim::secret::Secret::new("k".repeat(64)),
        )
        .await
        .unwrap();
    let deps = crate::caches::deps(
        Arc::new(store),
        secrets,
        kirim_tests::ManualClock::new(),
        kirim::wiring::READ_CACHE_TTL,
    );
    let tenant = kirim::domain::TenantId::generate();
    let draft = |action: &str| kirim::service::audit::Draft {
        tenant: Some(tenant.clone()),
        actor_type: "api_key",
        actor_id: "k".into(),
        action: action.into(),
        ip: None,
        outcome: kirim::ports::AuditOutcome::Success,
        details: serde_json::json!({"status": 202}),
    };
    kirim::service::audit::record(&deps, draft("POST /v1/first"))
        .await
        .unwrap();
    proxy.set_phase("append");
    let e = kirim::service::audit::record(&deps, draft("POST /v1/messages"))
        .await
        .unwrap();
    proxy.set_phase("after");

    let tally = proxy.take();
    let append = &tally["append"];
    assert_eq!(append.len(), 2, "two calls, nothing read: {append:?}");
    let (put, head) = (&append["DynamoDB.PutItem"], &append["DynamoDB.UpdateItem"]);
    assert_eq!((put.calls, put.wcu, head.calls, head.wcu), (1, 1.0, 1, 1.0));
    assert!(e.signature.is_some(), "the event carries its own signature");
    let v = kirim::service::audit::verify(&deps, &tenant, None)
        .await
        .unwrap();
    assert_eq!((v.valid, v.checked), (true, 2));
}

/// A send slot refused because the number is full costs one refused write, not three: the
/// refused update answers the item as it was, and its `tat` says no other step can succeed
/// (issue #13).
#[tokio::test]
async fn a_full_number_refuses_a_slot_in_one_write() {
    use kirim::ports::Throughput;

    let (store, proxy) = store_behind_proxy().await;
    let key = format!("pn{}", kirim_tests::rand_u32());
    let now = chrono::Utc::now();
    let wait = std::time::Duration::from_millis(999);
    proxy.set_phase("fill");
    let run = store.reserve_slots(&key, 20, now, wait, 20).await.unwrap();
    assert_eq!(
        run.map(|t| t.timestamp_micros()),
        Some(now.timestamp_micros())
    );
    proxy.set_phase("full");
    assert_eq!(store.reserve_slot(&key, 20, now, wait).await.unwrap(), None);
    assert_eq!(
        store.reserve_slots(&key, 20, now, wait, 3).await.unwrap(),
        None
    );
    proxy.set_phase("after");

    let tally = proxy.take();
    let update = |phase: &str| tally[phase]["DynamoDB.UpdateItem"];
    // A number this process never used: "next" finds no item, then "now" takes the run.
    assert_eq!(
        update("fill").calls,
        2,
        "a run of twenty: one refused write, one taken"
    );
    assert_eq!(
        (update("full").calls, update("full").wcu),
        (2, 2.0),
        "one refused write each"
    );
}

/// The opt-out check of a send (consistent) and of a dispatch (may lag) reads the
/// phone's opt-out and its pairing together: two reads in one round trip (issue #13: on
/// Lambda a request is billed, and its caller waits, for its round trips). Each call is
/// held 20 ms at the proxy, as a network would, so reads made together overlap for
/// certain and reads made one after the other never do.
#[tokio::test]
async fn an_opt_out_check_reads_the_phones_opt_out_and_its_pairing_in_one_round_trip() {
    use kirim::adapters::memory::MemorySecrets;
    use kirim::domain::{PhoneNumber, TemplateCategory};
    use std::sync::Arc;

    let (store, proxy) = store_behind_proxy().await;
    let deps = crate::caches::deps(
        Arc::new(store),
        Arc::new(MemorySecrets::default()),
        kirim_tests::ManualClock::new(),
        kirim::wiring::READ_CACHE_TTL,
    );
    let tenant = kirim::domain::TenantId::generate();
    let to = PhoneNumber::parse("+60123450777").unwrap();
    proxy.set_latency(std::time::Duration::from_millis(20));
    proxy.set_phase("send");
    kirim::service::optouts::check(&deps, &tenant, &to, Some(TemplateCategory::Marketing))
        .await
        .unwrap();
    proxy.set_phase("dispatch");
    kirim::service::optouts::check_queued(&deps, &tenant, &to, Some(TemplateCategory::Marketing))
        .await
        .unwrap();
    proxy.set_phase("after");

    let tally = proxy.take();
    for (phase, rcu) in [("send", 2.0), ("dispatch", 1.0)] {
        let get = tally[phase]["DynamoDB.GetItem"];
        assert_eq!(
            (get.calls, get.rcu, get.round_trips),
            (2, rcu, 1),
            "{phase}: the opt-out and the pairing, read together"
        );
    }

    // A mobile WhatsApp knows by two forms (Mexico's `+52…` and `+521…`): the same two reads
    // for each form, the forms one after the other. Nothing more: an opt-out's write and a
    // START read the other form's pairing, a send does not.
    let to = PhoneNumber::parse("+525512340777").unwrap();
    proxy.set_phase("send");
    kirim::service::optouts::check(&deps, &tenant, &to, Some(TemplateCategory::Marketing))
        .await
        .unwrap();
    proxy.set_phase("dispatch");
    kirim::service::optouts::check_queued(&deps, &tenant, &to, Some(TemplateCategory::Marketing))
        .await
        .unwrap();
    proxy.set_phase("after");
    let tally = proxy.take();
    for (phase, rcu) in [("send", 4.0), ("dispatch", 2.0)] {
        let get = tally[phase]["DynamoDB.GetItem"];
        assert_eq!(
            (get.calls, get.rcu, get.round_trips),
            (4, rcu, 2),
            "{phase}: each form's opt-out and pairing, read together"
        );
    }
}

/// A message's dispatch through the proxy, every call held 100 ms (a margin for a loaded
/// machine): the recipient's opt-out
/// and pairing are read in one round trip, and once Meta accepted, the wamid's index and
/// the `sent` move are written in one (issue #13). Everything else in the dispatch goes
/// one call at a time, so its round trips are its calls less those two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatch_reads_the_opt_outs_together_and_writes_the_index_and_sent_together() {
    use kirim_infra::local::start;
    use kirim_tests::TestApp;
    use std::time::Duration;

    let proxy = CountingProxy::start(&moto_endpoint().await).await.unwrap();
    let mut cfg = kirim_tests::local_config(kirim::config::Backend::Aws).await;
    cfg.aws_endpoint = Some(proxy.url.clone());
    cfg.pollers = 0;
    cfg.sandbox_status_delay = Duration::from_secs(600);
    kirim_tests::capture_logs();
    let stack = cfg.stack_name.clone();
    let app = TestApp {
        http: reqwest::Client::new(),
        app: start(cfg).await.expect("local mode starts"),
        stack,
    };
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450778").await;
    // Whatever the send still writes (nothing, today) stays out of the dispatch's count.
    proxy
        .settle(Duration::from_millis(300), Duration::from_secs(30))
        .await;
    proxy.set_latency(Duration::from_millis(100));
    proxy.set_phase("dispatch");
    let deps = app.app.deps.clone();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while kirim::queue_handlers::poll_once(&deps, Duration::from_millis(200)).await == 0
        && tokio::time::Instant::now() < give_up
    {}
    proxy.set_latency(Duration::ZERO);
    proxy.set_phase("after");
    let view = app.wait_status(&t.key, &id, "sent").await;
    assert_eq!(view["status"], "sent", "{view}");

    let tally = proxy.take();
    let dispatch = &tally["dispatch"];
    let platform: Vec<(&String, &Units)> = dispatch
        .iter()
        .filter(|(op, _)| !op.starts_with("SQS.ReceiveMessage"))
        .collect();
    let calls: u64 = platform.iter().map(|(_, u)| u.calls).sum();
    let trips: u64 = platform.iter().map(|(_, u)| u.round_trips).sum();
    // The index is an update (its mark of a status kept early stays), made beside `sent`.
    assert!(
        !dispatch.contains_key("DynamoDB.PutItem"),
        "no put: {dispatch:?}"
    );
    assert_eq!(
        trips,
        calls - 2,
        "two pairs of calls made together, the rest one at a time: {dispatch:?}"
    );
}

/// A campaign from a balance that cannot pay for one recipient is refused at the first
/// recipient its opt-out lookups find sendable, not after all of them (two reads each, up
/// to 10,000): a `402` costs a handful of reads, and no more than the lookups in flight past
/// a run of opted-out recipients at the head of the list.
#[tokio::test]
async fn a_campaign_the_balance_cannot_pay_is_refused_at_its_first_sendable_recipient() {
    use kirim::adapters::memory::MemorySecrets;
    use kirim::domain::{OptOutKey, OptOutScope, OptOutSource};
    use kirim::service::{broadcasts, errors::ServiceError, optouts, send::TemplateIn};
    use std::sync::Arc;

    let (store, proxy) = store_behind_proxy().await;
    let deps = crate::caches::deps(
        Arc::new(store),
        Arc::new(MemorySecrets::default()),
        kirim_tests::ManualClock::new(),
        std::time::Duration::ZERO,
    );
    let number = format!("{}", 3_000_000 + kirim_tests::rand_u32() % 900_000);
    let (tenant, _) = crate::broadcasts::promo_tenant(&deps, &number, 0).await;
    let recipients: Vec<String> = (0..100).map(|i| format!("+601234{i:04}8")).collect();
    // The first 30 have opted out.
    for r in &recipients[..30] {
        optouts::add(
            &deps,
            &tenant.id,
            optouts::Recipient::of(OptOutKey::parse(r).unwrap()),
            OptOutScope::All,
            OptOutSource::Api,
            "key_1",
            None,
        )
        .await
        .unwrap();
    }
    let reads_of = |tally: &kirim_infra::cost::Tally, phase: &str| -> u64 {
        tally[phase]
            .iter()
            .filter(|(op, _)| op.contains("Get") || op.contains("Query"))
            .map(|(_, u)| u.calls)
            .sum()
    };
    for (phase, list, most) in [
        ("sendable first", recipients[30..].to_vec(), 40),
        ("30 opted out first", recipients.clone(), 140),
    ] {
        let template: TemplateIn = serde_json::from_value(
            serde_json::json!({"name": "promo", "language": "en", "category": "utility"}),
        )
        .unwrap();
        proxy.set_phase(phase);
        let refused = broadcasts::create(&deps, &tenant.id, template, list, None).await;
        proxy.set_phase("after");
        assert!(
            matches!(refused, Err(ServiceError::InsufficientCredits)),
            "{phase}: {:?}",
            refused.map(|a| a.id)
        );
        let reads = reads_of(&proxy.take(), phase);
        assert!(
            reads < most,
            "{phase}: {reads} reads for a refused campaign"
        );
    }
}

/// A single send of a tenant with lanes to spend from is one transaction; a tenant whose
/// item is too low to refill a lane (under 16 prices: data model A80) costs its first send
/// a refused lane transaction and a read, and then this process takes its sends straight to
/// the tenant item for a few seconds: one transaction each, no read.
#[tokio::test]
async fn a_low_balance_tenants_sends_go_straight_to_its_item_after_the_first() {
    use kirim::ports::{MessageStore, TenantStore};
    let (store, proxy) = store_behind_proxy().await;
    let t = crate::contract::tenant(10);
    store
        .create_tenant(&t, &crate::contract::key_for(&t), None)
        .await
        .unwrap();
    let send = |phase: &'static str| {
        let (store, proxy, t) = (&store, &proxy, &t);
        async move {
            let (m, debit) = crate::contract::message_for(&t.id, chrono::Utc::now());
            proxy.set_phase(phase);
            store.insert_with_debit(&m, &debit).await.unwrap();
            proxy.set_phase("after");
        }
    };
    send("first").await;
    send("second").await;
    send("third").await;
    let tally = proxy.take();
    assert_eq!(tally["first"]["DynamoDB.TransactWriteItems"].calls, 2);
    assert!(tally["first"].contains_key("DynamoDB.Query"));
    for phase in ["second", "third"] {
        let ops = &tally[phase];
        assert_eq!(ops.len(), 1, "{phase}: {ops:?}");
        assert_eq!(ops["DynamoDB.TransactWriteItems"].calls, 1, "{phase}");
    }
}
