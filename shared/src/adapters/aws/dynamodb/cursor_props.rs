//! Property tests of the DynamoDB adapter's pagination cursors (issue 14): clients send
//! them back as they please. `decode_cursor` must never panic, never yield a key in
//! another tenant's partition (main table or status index), and read back what
//! `encode_cursor` wrote for the tenant it was written for.

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::keys::{self, tenant_pk};
use super::{decode_cursor, encode_cursor, message_cursor, Item};

fn msg_sk(id: &MessageId) -> String {
    keys::message(&TenantId::generate(), id).sk
}

fn status_gsi(t: &TenantId, st: crate::domain::MessageStatus) -> String {
    keys::message_status_gsi1_pk(t, st)
}
use crate::domain::{MessageId, MessageStatus, TenantId};
use crate::props::{self, re};
use crate::store_error::StoreError;

fn tenant() -> BoxedStrategy<TenantId> {
    any::<u128>()
        .prop_map(|u| TenantId::from_trusted(ulid::Ulid(u >> 2).to_string()))
        .boxed()
}

fn status() -> BoxedStrategy<MessageStatus> {
    prop::sample::select(vec![
        MessageStatus::Accepted,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
    ])
    .boxed()
}

/// The keys a Query of a tenant's messages stops at: the table's, and the status
/// index's (which carries the table's too).
fn last_key(t: TenantId) -> BoxedStrategy<Item> {
    (any::<u128>(), prop::option::of(status()))
        .prop_map(move |(u, st)| {
            let sk = msg_sk(&MessageId::from_trusted(ulid::Ulid(u >> 2).to_string()));
            let mut key = Item::new();
            key.insert("pk".into(), AttributeValue::S(tenant_pk(&t)));
            key.insert("sk".into(), AttributeValue::S(sk.clone()));
            if let Some(st) = st {
                key.insert("gsi1pk".into(), AttributeValue::S(status_gsi(&t, st)));
                key.insert("gsi1sk".into(), AttributeValue::S(sk));
            }
            key
        })
        .boxed()
}

fn encode_json(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A partition key value that may or may not be the tenant's own.
fn partition(own: TenantId, other: TenantId) -> BoxedStrategy<String> {
    let o = own.as_str().to_owned();
    let x = other.as_str().to_owned();
    prop_oneof![
        Just(format!("TENANT#{o}")),
        status().prop_map({
            let o = own.clone();
            move |st| status_gsi(&o, st)
        }),
        Just(format!("TENANT#{x}")),
        status().prop_map({
            let x = other.clone();
            move |st| status_gsi(&x, st)
        }),
        Just(format!("TENANT#{}", o.to_lowercase())),
        Just(format!("TENANT#{}", &o[..25])),
        Just(format!("tenant#{o}")),
        Just(format!(" TENANT#{o}")),
        Just("WABA#123456".to_owned()),
        Just(String::new()),
        re("\\PC{0,40}"),
    ]
    .boxed()
}

/// The tenant a partition key value names, if it names one (`TENANT#<id>` alone or
/// followed by `#…`).
fn names_tenant(v: &str) -> Option<TenantId> {
    let rest = v.strip_prefix("TENANT#")?;
    let id = rest.split('#').next()?;
    TenantId::parse(id)
}

/// Cursors a client could make: JSON maps of key names to anything, base64'd; base64 of
/// anything; anything.
fn crafted(own: TenantId, other: TenantId) -> BoxedStrategy<String> {
    let names = prop::sample::select(vec!["pk", "sk", "gsi1pk", "gsi1sk", "PK", "ttl", "x"]);
    let value = prop_oneof![
        3 => partition(own, other).prop_map(Value::String),
        1 => re("MSG#[0-9A-Z]{0,26}").prop_map(Value::String),
        1 => props::number(),
        1 => Just(json!(null)),
        1 => Just(json!({"S": "TENANT#x"})),
    ];
    prop_oneof![
        6 => prop::collection::vec((names, value), 0..7).prop_map(|kv| {
            encode_json(&Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>()))
        }),
        1 => prop::collection::vec(any::<u8>(), 0..80)
            .prop_map(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)),
        1 => props::any_json().prop_map(|v| encode_json(&v)),
        1 => re("[A-Za-z0-9_=+/-]{0,80}"),
        1 => re("\\PC{0,40}"),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(props::config(4_000))]

    #[test]
    fn a_cursor_never_decodes_to_a_key_outside_the_caller_s_partition(
        (own, cursor) in (tenant(), tenant()).prop_flat_map(|(own, other)| {
            (Just(own.clone()), crafted(own, other))
        })
    ) {
        let Ok(key) = decode_cursor(&cursor, &own) else {
            return Ok(());
        };
        prop_assert!(key.len() <= 4, "{key:?}");
        for (name, v) in &key {
            let AttributeValue::S(s) = v else {
                return Err(TestCaseError::fail(format!("{name} is not a string: {v:?}")));
            };
            if name == "pk" || name == "gsi1pk" {
                prop_assert!(s.starts_with(&tenant_pk(&own)), "{name} = {s:?}");
                if let Some(t) = names_tenant(s) {
                    prop_assert_eq!(&t, &own, "{} = {:?}", name, s);
                }
            }
        }
    }

    #[test]
    fn a_messages_cursor_is_a_message_of_the_caller_s_or_invalid(
        (own, cursor) in (tenant(), tenant()).prop_flat_map(|(own, other)| {
            (Just(own.clone()), crafted(own, other))
        })
    ) {
        match message_cursor(&cursor, &own) {
            Err(e) => prop_assert_eq!(e, StoreError::InvalidCursor),
            Ok(id) => {
                let key = decode_cursor(&cursor, &own).unwrap();
                prop_assert_eq!(
                    key.get("sk").and_then(|v| v.as_s().ok()),
                    Some(&msg_sk(&id))
                );
            }
        }
    }

    #[test]
    fn a_messages_cursor_reads_back_as_its_message_whatever_index_wrote_it(
        (own, key) in tenant().prop_flat_map(|own| (Just(own.clone()), last_key(own)))
    ) {
        let cursor = encode_cursor(&key).unwrap();
        let id = message_cursor(&cursor, &own).unwrap();
        prop_assert_eq!(Some(&msg_sk(&id)), key.get("sk").and_then(|v| v.as_s().ok()));
    }

    #[test]
    fn a_cursor_reads_back_as_the_key_it_was_made_of_and_only_for_its_tenant(
        (own, other, key) in (tenant(), tenant())
            .prop_flat_map(|(own, other)| (Just(own.clone()), Just(other), last_key(own)))
    ) {
        let mut with_other_attributes = key.clone();
        with_other_attributes.insert("n".into(), AttributeValue::N("1".into()));
        let cursor = encode_cursor(&with_other_attributes).unwrap();
        prop_assert!(cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(decode_cursor(&cursor, &own).unwrap(), key);
        if other != own {
            prop_assert!(matches!(decode_cursor(&cursor, &other), Err(StoreError::InvalidCursor)));
        }
    }
}
