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
    let unit = |calls, wcu, rcu, gsi_wcu| Units {
        calls,
        wcu,
        rcu,
        gsi_wcu,
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
/// learns whether statuses were kept for it from the item it replaced, not from a read.
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
    assert_eq!(index["DynamoDB.PutItem"].rcu, 0.0);
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
    let v = kirim::service::audit::verify(&deps, &tenant).await.unwrap();
    assert_eq!((v.valid, v.checked), (true, 2));
}
