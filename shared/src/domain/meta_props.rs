//! Property tests of [`meta::parse_notification`], the parser of what Meta POSTs to
//! `/webhooks/meta`. It must read any JSON (never refuse it, never panic), turn every
//! status and inbound item of a well-formed body into exactly one event, keep no inbound
//! text, and never make a [`Wamid`](super::meta::Wamid) of more than [`MAX_WAMID`] bytes.
//!
//! Two kinds of input: arbitrary JSON (with Meta's key names mixed in, so it reaches the
//! parser's paths) and arbitrary bytes; and generated near-valid notifications whose
//! generator knows which event each piece must become.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::meta::{
    parse_notification, parse_tree, statuses_only, MetaEvent, MetaStatus, NotJson, MAX_WAMID,
};
use super::{Keyword, OptOutSource, PhoneNumber, START_WORDS, STOP_WORDS};
use crate::props::{self, huge, number, re};

const CASES: u32 = 2_000;

// ---- arbitrary JSON --------------------------------------------------------------

/// Keys Meta uses, so random objects reach the parser's paths, and anything else.
const KEYS: &[&str] = &[
    "object",
    "entry",
    "id",
    "changes",
    "field",
    "value",
    "metadata",
    "phone_number_id",
    "statuses",
    "messages",
    "status",
    "timestamp",
    "recipient_id",
    "biz_opaque_callback_data",
    "errors",
    "code",
    "title",
    "message",
    "from",
    "type",
    "text",
    "body",
    "button",
    "payload",
    "interactive",
    "button_reply",
    "event",
    "ban_info",
    "waba_ban_state",
];

/// Strings that mean something somewhere in a notification.
const WORDS: &[&str] = &[
    "messages",
    "account_update",
    "sent",
    "delivered",
    "read",
    "failed",
    "deleted",
    "wamid.HBgMNjAxMjM0NTY3ODkVAgARGBI",
    "STOP",
    "start",
    "60123456789",
    "1700000000",
    "DISABLED_UPDATE",
    "",
];

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(str::to_owned),
        3 => re("\\PC{0,24}"),
        1 => huge(),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => re("\\PC{0,12}"),
    ]
    .boxed()
}

fn json_of(depth: u32, size: u32) -> BoxedStrategy<Value> {
    props::json_of(depth, size, text(), key())
}

/// Any JSON value, up to five levels deep.
fn any_json() -> BoxedStrategy<Value> {
    json_of(5, 96)
}

/// A small JSON value: what turns up inside an otherwise well-formed item.
fn small_json() -> BoxedStrategy<Value> {
    json_of(2, 8)
}

/// JSON that is not a string: what a confused sender puts where a string belongs.
fn not_a_string() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        prop::collection::vec(small_json(), 0..3).prop_map(Value::Array),
        Just(json!({"id": "wamid.X", "status": "read"})),
    ]
    .boxed()
}

/// JSON that is not an object.
fn not_an_object() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
        prop::collection::vec(small_json(), 0..3).prop_map(Value::Array),
    ]
    .boxed()
}

// ---- near-valid notifications, each piece with the event it must become ------------

/// The event one piece of a generated notification must become, in order.
#[derive(Clone, Debug)]
enum Slot {
    Status {
        pnid: Option<String>,
        wamid: String,
        status: MetaStatus,
        timestamp: Option<i64>,
        callback: Option<Named>,
        recipient: Option<String>,
    },
    Inbound {
        pnid: Option<String>,
        from: Option<String>,
        request: Option<(Keyword, OptOutSource)>,
    },
    Account {
        waba_id: String,
        event: String,
        ban_state: Option<String>,
    },
    /// Must be skipped as this piece (`entry`, `change`, `field`, `status`, `message`).
    Unknown(&'static str),
    /// Random JSON where a status (`status`) or a message (`message`) goes: one event,
    /// typed or skipped, of that slot.
    Either(&'static str),
}

/// A generated piece: its JSON, the events it must become, and the inbound texts that
/// must not be kept.
#[derive(Clone, Debug)]
struct Piece {
    json: Value,
    slots: Vec<Slot>,
    secrets: Vec<String>,
}

impl Piece {
    fn one(json: Value, slot: Slot) -> Self {
        Piece {
            json,
            slots: vec![slot],
            secrets: Vec::new(),
        }
    }

    /// Pieces in a JSON list: their events in order.
    fn list(items: Vec<Piece>) -> Self {
        let mut p = Piece {
            json: Value::Null,
            slots: Vec::new(),
            secrets: Vec::new(),
        };
        let mut list = Vec::new();
        for i in items {
            list.push(i.json);
            p.slots.extend(i.slots);
            p.secrets.extend(i.secrets);
        }
        p.json = Value::Array(list);
        p
    }
}

const STATUS_WORDS: [(&str, MetaStatus); 4] = [
    ("sent", MetaStatus::Sent),
    ("delivered", MetaStatus::Delivered),
    ("read", MetaStatus::Read),
    ("failed", MetaStatus::Failed),
];

/// Valid wamids, some exactly at the byte bound and multi-byte.
fn wamid() -> BoxedStrategy<String> {
    prop_oneof![
        4 => re("wamid\\.[A-Za-z0-9=_-]{10,80}"),
        1 => (1usize..=MAX_WAMID / 2).prop_map(|n| "é".repeat(n)),
        1 => Just("w".repeat(MAX_WAMID)),
    ]
    .boxed()
}

/// Ids that are not wamids: empty, over the byte bound, with a control character, or not
/// a string at all.
fn bad_wamid() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!("")),
        (MAX_WAMID / 2 + 1..2_000).prop_map(|n| json!("é".repeat(n))),
        (MAX_WAMID + 1..4_000).prop_map(|n| json!("w".repeat(n))),
        re("wamid\\.[a-z]{1,10}[\\x00-\\x1f\\x7f]").prop_map(Value::String),
        not_a_string(),
    ]
    .boxed()
}

/// Meta's timestamp and what is read of it.
fn timestamp() -> BoxedStrategy<Option<(Value, Option<i64>)>> {
    prop_oneof![
        Just(None),
        any::<i64>().prop_map(|t| Some((json!(t.to_string()), Some(t)))),
        any::<i64>().prop_map(|t| Some((json!(format!(" {t}\t")), Some(t)))),
        any::<i64>().prop_map(|t| Some((json!(t), Some(t)))),
        re("[a-z.]{1,6}").prop_map(|s| Some((json!(s), None))),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(|t| Some((json!(t), None))),
        Just(Some((json!(1.5), None))),
        Just(Some((json!([1700000000]), None))),
    ]
    .boxed()
}

/// A phone number as Meta writes it (digits, no `+`), and the E.164 it names, if any.
fn meta_digits() -> BoxedStrategy<(String, Option<String>)> {
    prop_oneof![
        re(crate::props::VALID_DIGITS)
            .prop_filter("a country code in use", |d| {
                crate::domain::country_code_in_use(d)
            })
            .prop_map(|d| (d.clone(), Some(format!("+{d}")))),
        re("[0-9a-z+ -]{0,18}").prop_map(|d| {
            let e164 = PhoneNumber::parse(&format!("+{d}"))
                .ok()
                .map(|p| p.to_string());
            (d, e164)
        }),
    ]
    .boxed()
}

/// The message id and the tenant id (if any) a callback data names.
type Named = (String, Option<String>);

/// Callback data echoed back in `biz_opaque_callback_data`, and the message id and
/// tenant id it names, if it is Kirim's (`meta::Callback`).
fn callback() -> BoxedStrategy<(String, Option<Named>)> {
    let ulid = || any::<u128>().prop_map(|u| ulid::Ulid(u).to_string());
    prop_oneof![
        // The old form: the message id alone.
        ulid().prop_map(|s| (s.clone(), Some((s, None)))),
        // Ids are read in any case.
        ulid().prop_map(|s| (s.to_lowercase(), Some((s, None)))),
        // Kirim's form: `{message_id}.{tenant_id}`, in any case.
        (ulid(), ulid(), any::<bool>()).prop_map(|(m, t, lower)| {
            let text = format!("{m}.{t}");
            let text = if lower { text.to_lowercase() } else { text };
            (text, Some((m, Some(t))))
        }),
        // Not Kirim's: `-`, `.`, `/`, `u` are not base32, and 26 characters over 7…
        // overflow; at most 51 characters, shorter than the two ids and their `.`.
        re("[a-z0-9./u-]{0,30}[./u-][a-z0-9./u-]{0,20}").prop_map(|s| (s, None)),
        re("[89A-HJKMNP-TV-Z][0-9A-HJKMNP-TV-Z]{25}").prop_map(|s| (s, None)),
        // Either id not one, or a part too many.
        (ulid(), re("[89A-HJKMNP-TV-Z][0-9A-HJKMNP-TV-Z]{25}"))
            .prop_map(|(m, not)| (format!("{m}.{not}"), None)),
        (ulid(), re("[89A-HJKMNP-TV-Z][0-9A-HJKMNP-TV-Z]{25}"))
            .prop_map(|(t, not)| (format!("{not}.{t}"), None)),
        (ulid(), ulid(), re("[./-][0-9A-Z]{0,26}"))
            .prop_map(|(m, t, more)| (format!("{m}.{t}{more}"), None)),
    ]
    .boxed()
}

/// Fields Kirim does not read, to be ignored.
fn extras() -> BoxedStrategy<Vec<(String, Value)>> {
    prop::collection::vec((re("x_[a-z]{1,8}"), small_json()), 0..3).boxed()
}

fn status_error() -> BoxedStrategy<Value> {
    prop_oneof![
        (any::<i64>(), text()).prop_map(|(code, title)| json!({"code": code, "title": title})),
        (any::<i64>(), text())
            .prop_map(|(code, m)| json!({"code": code, "message": m, "error_data": {}})),
        small_json(),
    ]
    .boxed()
}

/// A well-formed status with random optional parts: one `Status` event.
fn good_status() -> BoxedStrategy<(Map<String, Value>, Slot)> {
    (
        wamid(),
        prop::sample::select(STATUS_WORDS.to_vec()),
        timestamp(),
        prop::option::of(meta_digits()),
        prop::option::of(callback()),
        prop::option::of(prop::collection::vec(status_error(), 0..8)),
        extras(),
    )
        .prop_map(
            |(wamid, (word, status), ts, recipient, cb, errors, extras)| {
                let mut m: Map<String, Value> = extras.into_iter().collect();
                m.insert("id".into(), json!(wamid));
                m.insert("status".into(), json!(word));
                if let Some((v, _)) = &ts {
                    m.insert("timestamp".into(), v.clone());
                }
                if let Some((d, _)) = &recipient {
                    m.insert("recipient_id".into(), json!(d));
                }
                if let Some((c, _)) = &cb {
                    m.insert("biz_opaque_callback_data".into(), json!(c));
                }
                if let Some(errors) = errors {
                    m.insert("errors".into(), Value::Array(errors));
                }
                let slot = Slot::Status {
                    pnid: None,
                    wamid,
                    status,
                    timestamp: ts.and_then(|(_, t)| t),
                    callback: cb.and_then(|(_, id)| id),
                    recipient: recipient.and_then(|(_, p)| p),
                };
                (m, slot)
            },
        )
        .boxed()
}

/// One item of a `statuses` list.
fn status_item() -> BoxedStrategy<Piece> {
    prop_oneof![
        // Well-formed.
        4 => good_status().prop_map(|(m, slot)| Piece::one(Value::Object(m), slot)),
        // Its id is no wamid, or its status word is unknown or not a string, or one is
        // missing: skipped.
        2 => (good_status(), bad_wamid()).prop_map(|((mut m, _), id)| {
            m.insert("id".into(), id);
            Piece::one(Value::Object(m), Slot::Unknown("status"))
        }),
        1 => (good_status(), prop_oneof![
            re("[a-z_]{0,12}")
                .prop_filter("not a known status", |s| MetaStatus::parse(s).is_none())
                .prop_map(Value::String),
            Just(json!("SENT")),
            not_a_string(),
        ]).prop_map(|((mut m, _), st)| {
            m.insert("status".into(), st);
            Piece::one(Value::Object(m), Slot::Unknown("status"))
        }),
        1 => (good_status(), prop::sample::select(vec!["id", "status"])).prop_map(
            |((mut m, _), k)| {
                m.remove(k);
                Piece::one(Value::Object(m), Slot::Unknown("status"))
            }
        ),
        // An optional part of the wrong type: one event, whichever.
        1 => (
            good_status(),
            prop::sample::select(vec!["timestamp", "recipient_id", "biz_opaque_callback_data", "errors"]),
            not_a_string(),
        ).prop_map(|((mut m, _), k, v)| {
            m.insert(k.into(), v);
            Piece::one(Value::Object(m), Slot::Either("status"))
        }),
        // Anything at all.
        1 => json_of(3, 24).prop_map(|v| Piece::one(v, Slot::Either("status"))),
    ]
    .boxed()
}

/// Inbound text, never a STOP/START word (a marker makes a leak findable).
fn secret() -> BoxedStrategy<String> {
    prop_oneof![
        4 => re("[\\p{L}\\p{N} ]{4,40}").prop_map(|s| format!("secret {s}")),
        1 => (re("[\\p{L}\\p{N}]{1,4}"), 500usize..2_000).prop_map(|(s, n)| format!("secret {}", s.repeat(n))),
    ]
    .boxed()
}

/// A STOP or START word as a person types it: any case, padded.
fn keyword_text() -> BoxedStrategy<(String, Keyword)> {
    let words: Vec<(&str, Keyword)> = STOP_WORDS
        .iter()
        .map(|w| (*w, Keyword::Stop))
        .chain(START_WORDS.iter().map(|w| (*w, Keyword::Start)))
        .collect();
    (
        prop::sample::select(words),
        prop::collection::vec(any::<bool>(), 16),
        re("[ \t\n]{0,2}"),
        re("[ \t\n]{0,2}"),
    )
        .prop_map(|((w, k), upper, pre, post)| {
            let cased: String = w
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c })
                .collect();
            (format!("{pre}{cased}{post}"), k)
        })
        .boxed()
}

/// A reply's text: a keyword (and the request it is) or a secret (no request).
fn reply() -> BoxedStrategy<(String, Option<Keyword>)> {
    prop_oneof![
        keyword_text().prop_map(|(t, k)| (t, Some(k))),
        secret().prop_map(|s| (s, None)),
    ]
    .boxed()
}

/// An inbound message's JSON (without `from`), the request it carries, and its texts
/// that must not be kept.
type InboundKind = (
    Map<String, Value>,
    Option<(Keyword, OptOutSource)>,
    Vec<String>,
);

/// Texts of a reply that must not be kept: all but a STOP/START word.
fn kept_out(reply: &(String, Option<Keyword>)) -> Option<String> {
    reply.1.is_none().then(|| reply.0.clone())
}

/// An inbound message of one of the kinds Kirim reads, or of one it ignores.
fn inbound_kind() -> BoxedStrategy<InboundKind> {
    let with = |kind: &str, v: Value| {
        let mut m = Map::new();
        m.insert("type".into(), json!(kind));
        m.insert(kind.into(), v);
        m
    };
    prop_oneof![
        reply().prop_map(move |r| (
            with("text", json!({"body": r.0})),
            r.1.map(|k| (k, OptOutSource::Keyword)),
            kept_out(&r).into_iter().collect()
        )),
        (prop::option::of(reply()), secret()).prop_map(move |(payload, label)| {
            let mut b = json!({"text": label});
            if let Some((p, _)) = &payload {
                b["payload"] = json!(p);
            }
            let request = payload
                .as_ref()
                .and_then(|(_, k)| *k)
                .map(|k| (k, OptOutSource::Button));
            let mut texts = vec![label];
            texts.extend(payload.as_ref().and_then(kept_out));
            (with("button", b), request, texts)
        }),
        (prop::option::of(reply()), secret()).prop_map(move |(id, title)| {
            let mut r = json!({"title": title});
            if let Some((i, _)) = &id {
                r["id"] = json!(i);
            }
            let request = id
                .as_ref()
                .and_then(|(_, k)| *k)
                .map(|k| (k, OptOutSource::Button));
            let mut texts = vec![title];
            texts.extend(id.as_ref().and_then(kept_out));
            (
                with(
                    "interactive",
                    json!({"type": "button_reply", "button_reply": r}),
                ),
                request,
                texts,
            )
        }),
        // Typed text decides, even beside a STOP button.
        (secret(), keyword_text()).prop_map(move |(body, (stop, _))| {
            let mut m = with("text", json!({"body": body}));
            m.insert("button".into(), json!({"payload": stop}));
            (m, None, vec![body])
        }),
        secret().prop_map(move |caption| (
            with("image", json!({"id": "1234567890", "caption": caption})),
            None,
            vec![caption]
        )),
    ]
    .boxed()
}

/// One item of a `messages` list.
fn message_item() -> BoxedStrategy<Piece> {
    let good = (
        prop::option::of(meta_digits()),
        inbound_kind(),
        wamid(),
        extras(),
    )
        .prop_map(|(from, (kind, request, texts), id, extras)| {
            let mut m: Map<String, Value> = extras.into_iter().collect();
            m.extend(kind);
            m.insert("id".into(), json!(id));
            m.insert("timestamp".into(), json!("1700000000"));
            if let Some((d, _)) = &from {
                m.insert("from".into(), json!(d));
            }
            let slot = Slot::Inbound {
                pnid: None,
                from: from.and_then(|(_, p)| p),
                request,
            };
            (m, slot, texts)
        });
    prop_oneof![
        4 => good.clone().prop_map(|(m, slot, secrets)| Piece {
            json: Value::Object(m),
            slots: vec![slot],
            secrets,
        }),
        // A part Kirim reads holds the wrong type: one event, whichever; its texts are
        // still not kept.
        1 => (
            good,
            prop::sample::select(vec!["from", "text", "button", "interactive"]),
            not_an_object(),
        ).prop_map(|((mut m, _, secrets), k, v)| {
            m.insert(k.into(), v);
            Piece {
                json: Value::Object(m),
                slots: vec![Slot::Either("message")],
                secrets,
            }
        }),
        // Typed text whose body is not text.
        1 => (secret(), not_a_string()).prop_map(|(s, body)| Piece {
            json: json!({"from": "60123456789", "type": "text", "text": {"body": body}, "context": {"note": s}}),
            slots: vec![Slot::Either("message")],
            secrets: vec![s],
        }),
        1 => json_of(3, 24).prop_map(|v| Piece::one(v, Slot::Either("message"))),
    ]
    .boxed()
}

/// A list where Meta puts items, or something that is not a list: one skipped piece.
fn list_of(item: BoxedStrategy<Piece>, piece: &'static str) -> BoxedStrategy<Option<Piece>> {
    prop_oneof![
        2 => Just(None),
        6 => prop::collection::vec(item, 0..5).prop_map(|items| Some(Piece::list(items))),
        1 => prop_oneof![
            Just(Value::Null),
            text().prop_map(Value::String),
            number(),
            Just(json!({"id": "wamid.X", "status": "read"})),
        ]
        .prop_map(move |v| Some(Piece::one(v, Slot::Unknown(piece)))),
    ]
    .boxed()
}

/// `metadata.phone_number_id` as sent, and what the events carry.
fn metadata() -> BoxedStrategy<(Option<Value>, Option<String>)> {
    prop_oneof![
        Just((None, None)),
        re("[0-9]{1,16}").prop_map(|p| (Some(json!({"phone_number_id": p})), Some(p))),
        Just((Some(json!({"phone_number_id": ""})), None)),
        number().prop_map(|n| (Some(json!({"phone_number_id": n})), None)),
        not_an_object().prop_map(|m| (Some(m), None)),
    ]
    .boxed()
}

/// A `messages`-like change: statuses and/or inbound messages.
fn messages_change() -> BoxedStrategy<Piece> {
    (
        prop_oneof![
            3 => Just("messages".to_owned()),
            1 => re("[a-z_]{0,16}").prop_filter("not account_update", |f| f != "account_update"),
        ],
        metadata(),
        list_of(status_item(), "status"),
        list_of(message_item(), "message"),
        extras(),
    )
        .prop_map(|(field, (meta, pnid), statuses, messages, extras)| {
            let mut value: Map<String, Value> = extras.into_iter().collect();
            if let Some(m) = meta {
                value.insert("metadata".into(), m);
            }
            value.insert("messaging_product".into(), json!("whatsapp"));
            // Neither list: the change is a field Kirim does not read.
            let mut p = Piece::one(Value::Null, Slot::Unknown("field"));
            if statuses.is_some() || messages.is_some() {
                p.slots.clear();
            }
            for (k, list) in [("statuses", statuses), ("messages", messages)] {
                if let Some(list) = list {
                    value.insert(k.into(), list.json);
                    p.slots.extend(list.slots);
                    p.secrets.extend(list.secrets);
                }
            }
            for slot in &mut p.slots {
                match slot {
                    Slot::Status { pnid: p, .. } | Slot::Inbound { pnid: p, .. } => {
                        *p = pnid.clone()
                    }
                    _ => {}
                }
            }
            p.json = json!({"field": field, "value": value});
            p
        })
        .boxed()
}

/// An `account_update` change; `waba_id` is filled in by its entry.
fn account_change() -> BoxedStrategy<Piece> {
    prop_oneof![
        (
            prop::option::of(prop_oneof![
                prop::sample::select(vec![
                    "ACCOUNT_RESTRICTION",
                    "DISABLED_UPDATE",
                    "VERIFIED_ACCOUNT"
                ])
                .prop_map(str::to_owned),
                re("\\PC{0,20}"),
            ]),
            prop::option::of(prop::option::of(prop_oneof![
                Just("REINSTATE".to_owned()),
                Just("SCHEDULE_FOR_DISABLE".to_owned()),
                re("[A-Z_]{0,12}"),
            ])),
        )
            .prop_map(|(event, ban)| {
                let mut value = json!({});
                if let Some(e) = &event {
                    value["event"] = json!(e);
                }
                if let Some(b) = &ban {
                    value["ban_info"] = match b {
                        Some(s) => json!({"waba_ban_state": s}),
                        None => json!({}),
                    };
                }
                Piece::one(
                    json!({"field": "account_update", "value": value}),
                    Slot::Account {
                        waba_id: String::new(),
                        event: event.unwrap_or_default(),
                        ban_state: ban.flatten(),
                    },
                )
            }),
        // An event that is not a string.
        not_a_string()
            .prop_filter("not null", |v| !v.is_null())
            .prop_map(|e| Piece::one(
                json!({"field": "account_update", "value": {"event": e}}),
                Slot::Unknown("change")
            )),
    ]
    .boxed()
}

fn change() -> BoxedStrategy<Piece> {
    prop_oneof![
        6 => messages_change(),
        2 => account_change(),
        // A value that is not an object, or none: the change is skipped.
        1 => (re("[a-z_]{0,16}"), prop::option::of(not_an_object())).prop_map(|(field, value)| {
            let mut c = json!({"field": field});
            if let Some(v) = value {
                c["value"] = v;
            }
            Piece::one(c, Slot::Unknown("change"))
        }),
    ]
    .boxed()
}

/// An entry's `id` as sent, and the WABA id an account update names.
fn waba_id() -> BoxedStrategy<(Option<Value>, String)> {
    prop_oneof![
        re("[0-9]{1,16}").prop_map(|s| (Some(json!(s)), s)),
        any::<i64>().prop_map(|n| (Some(json!(n)), n.to_string())),
        Just((None, String::new())),
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            Just(json!(["1"]))
        ]
        .prop_map(|v| (Some(v), String::new())),
    ]
    .boxed()
}

fn entry() -> BoxedStrategy<Piece> {
    (
        waba_id(),
        prop_oneof![
            8 => prop::collection::vec(change(), 0..4).prop_map(Some),
            1 => Just(None),
        ],
        prop::option::of(not_an_object().prop_filter("not a list", |v| !v.is_array())),
    )
        .prop_map(|((id, waba), changes, bad_changes)| {
            let mut e = json!({"time": 1700000000});
            if let Some(id) = id {
                e["id"] = id;
            }
            let Some(changes) = changes else {
                if let Some(v) = bad_changes {
                    e["changes"] = v;
                }
                return Piece::one(e, Slot::Unknown("entry"));
            };
            let mut p = Piece::list(changes);
            for slot in &mut p.slots {
                if let Slot::Account { waba_id, .. } = slot {
                    waba_id.clone_from(&waba);
                }
            }
            e["changes"] = std::mem::take(&mut p.json);
            p.json = e;
            p
        })
        .boxed()
}

fn notification() -> BoxedStrategy<Piece> {
    prop::collection::vec(entry(), 0..4)
        .prop_map(|entries| {
            let mut p = Piece::list(entries);
            p.json = json!({"object": "whatsapp_business_account", "entry": p.json});
            p
        })
        .boxed()
}

// ---- checks ------------------------------------------------------------------------

/// What holds of every event, whatever the body.
fn check_bounds(events: &[MetaEvent]) -> Result<(), TestCaseError> {
    for e in events {
        match e {
            MetaEvent::Status(s) => {
                let w = s.wamid.as_str();
                prop_assert!(
                    !w.is_empty() && w.len() <= MAX_WAMID,
                    "wamid of {} bytes",
                    w.len()
                );
                prop_assert!(!w.chars().any(char::is_control));
                prop_assert!(s.errors.len() <= 5);
                prop_assert!(s.errors.iter().all(|e| e.title.chars().count() <= 200));
            }
            MetaEvent::Unknown(u) => prop_assert!(u.field.chars().count() <= 64),
            MetaEvent::UserPreference(p) => {
                prop_assert!(p.phone.is_some() || p.user_id.is_some())
            }
            MetaEvent::Inbound(_)
            | MetaEvent::AccountUpdate(_)
            | MetaEvent::Template(_)
            | MetaEvent::NumberQuality(_) => {}
        }
    }
    Ok(())
}

fn check_slot(event: &MetaEvent, slot: &Slot) -> Result<(), TestCaseError> {
    match (slot, event) {
        (
            Slot::Status {
                pnid,
                wamid,
                status,
                timestamp,
                callback,
                recipient,
            },
            MetaEvent::Status(s),
        ) => {
            prop_assert_eq!(&s.phone_number_id, pnid);
            prop_assert_eq!(s.wamid.as_str(), wamid.as_str());
            prop_assert_eq!(s.status, *status);
            prop_assert_eq!(s.timestamp, *timestamp);
            prop_assert_eq!(
                s.callback
                    .as_ref()
                    .map(|c| (c.message.as_str(), c.tenant())),
                callback.as_ref().map(|(m, t)| (
                    m.as_str(),
                    t.as_deref().and_then(crate::domain::TenantId::parse)
                ))
            );
            prop_assert_eq!(
                s.recipient.as_ref().map(PhoneNumber::as_str),
                recipient.as_deref()
            );
        }
        (
            Slot::Inbound {
                pnid,
                from,
                request,
            },
            MetaEvent::Inbound(m),
        ) => {
            prop_assert_eq!(&m.phone_number_id, pnid);
            prop_assert_eq!(m.from.as_ref().map(PhoneNumber::as_str), from.as_deref());
            prop_assert_eq!(&m.request, request);
        }
        (
            Slot::Account {
                waba_id,
                event,
                ban_state,
            },
            MetaEvent::AccountUpdate(a),
        ) => {
            prop_assert_eq!(&a.waba_id, waba_id);
            prop_assert_eq!(&a.event, event);
            prop_assert_eq!(&a.ban_state, ban_state);
        }
        (Slot::Unknown(piece), MetaEvent::Unknown(u)) => prop_assert_eq!(u.piece, *piece),
        (Slot::Either("status"), MetaEvent::Status(_)) => {}
        (Slot::Either("message"), MetaEvent::Inbound(_)) => {}
        (Slot::Either(piece), MetaEvent::Unknown(u)) => prop_assert_eq!(u.piece, *piece),
        (slot, event) => prop_assert!(false, "expected {slot:?}, got {event:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(props::config(CASES))]

    #[test]
    fn any_json_body_is_read_without_panicking_and_never_refused(body in any_json()) {
        let raw = serde_json::to_vec(&body).unwrap();
        let events = parse_notification(&raw);
        prop_assert!(events.is_ok(), "JSON refused: {events:?}");
        check_bounds(&events.unwrap())?;
    }

    #[test]
    fn any_bytes_are_refused_only_when_they_are_not_json(
        raw in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            // Valid notifications with one byte changed, cut short or doubled.
            (notification(), any::<prop::sample::Index>(), any::<u8>(), 0u8..3).prop_map(
                |(p, at, byte, how)| {
                    let mut raw = serde_json::to_vec(&p.json).unwrap();
                    let i = at.index(raw.len());
                    match how {
                        0 => raw[i] = byte,
                        1 => raw.truncate(i),
                        _ => raw.insert(i, byte),
                    }
                    raw
                }
            ),
        ]
    ) {
        let is_json = serde_json::from_slice::<Value>(&raw).is_ok();
        match parse_notification(&raw) {
            Ok(events) => {
                prop_assert!(is_json, "bytes that are not JSON were read");
                check_bounds(&events)?;
            }
            Err(NotJson) => prop_assert!(!is_json, "a JSON body was refused"),
        }
    }

    #[test]
    fn every_item_of_a_well_formed_notification_is_exactly_one_event_and_no_text_is_kept(
        n in notification()
    ) {
        let raw = serde_json::to_vec(&n.json).unwrap();
        let events = parse_notification(&raw).unwrap();
        check_bounds(&events)?;
        prop_assert_eq!(events.len(), n.slots.len(), "events {:?}\nslots {:?}", events, n.slots);
        for (event, slot) in events.iter().zip(&n.slots) {
            check_slot(event, slot)?;
        }
        let debug = format!("{events:?}");
        for s in &n.secrets {
            prop_assert!(!debug.contains(s.as_str()), "inbound text kept: {s:?}");
        }
    }
}

/// The statuses-only reader answers exactly what the tree reader answers, or nothing.
fn fast_agrees(raw: &[u8]) -> Result<(), TestCaseError> {
    if let Some(fast) = statuses_only(raw) {
        prop_assert_eq!(Ok(fast), parse_tree(raw));
    }
    Ok(())
}

/// A status as Meta sends most of them: plain text, some parts left out.
fn plain_status() -> BoxedStrategy<Value> {
    (
        re("wamid\\.[A-Za-z0-9=_-]{1,48}"),
        prop::sample::select(vec!["sent", "delivered", "read", "failed", "deleted"]),
        prop::option::of(prop_oneof![
            re("[0-9]{1,10}").prop_map(Value::String),
            (0i64..2_000_000_000).prop_map(Value::from),
        ]),
        // (Meta's numbers: a country code in use.)
        prop::option::of(
            re("[1-9][0-9]{7,14}").prop_filter("a country code in use", |d| {
                crate::domain::country_code_in_use(d)
            }),
        ),
        prop::option::of(prop_oneof![
            re("[0-9A-HJKMNP-TV-Z]{26}"),
            re("[0-9A-HJKMNP-TV-Z]{26}\\.[0-9A-HJKMNP-TV-Z]{26}"),
        ]),
        prop::option::of((
            prop::sample::select(vec![
                "marketing",
                "utility",
                "authentication",
                "authentication-international",
                "service",
                "x",
            ]),
            prop::option::of(prop::sample::select(vec!["PMP", "CBP"])),
        )),
    )
        .prop_map(|(id, status, timestamp, recipient, callback, pricing)| {
            let mut m = Map::new();
            m.insert("id".into(), json!(id));
            m.insert("status".into(), json!(status));
            if let Some(t) = timestamp {
                m.insert("timestamp".into(), t);
            }
            if let Some(r) = recipient {
                m.insert("recipient_id".into(), json!(r));
            }
            if let Some(c) = callback {
                m.insert("biz_opaque_callback_data".into(), json!(c));
            }
            if let Some((category, model)) = pricing {
                let mut p = json!({"billable": true, "category": category});
                if let Some(model) = model {
                    p["pricing_model"] = json!(model);
                }
                m.insert("pricing".into(), p);
            }
            Value::Object(m)
        })
        .boxed()
}

/// Bodies of statuses only, well-formed or not: what the statuses-only reader is for.
fn statuses_notification() -> BoxedStrategy<Value> {
    let change = (
        prop_oneof![
            3 => Just("messages".to_owned()),
            1 => re("[a-z_]{0,16}"),
        ],
        metadata(),
        prop::collection::vec(
            prop_oneof![
                3 => plain_status(),
                1 => status_item().prop_map(|p| p.json),
            ],
            0..5,
        ),
        extras(),
    )
        .prop_map(|(field, (meta, _), items, extras)| {
            let mut value: Map<String, Value> = extras.into_iter().collect();
            if let Some(m) = meta {
                value.insert("metadata".into(), m);
            }
            value.insert("statuses".into(), Value::Array(items));
            json!({"field": field, "value": value})
        });
    prop::collection::vec(prop::collection::vec(change, 0..3), 0..3)
        .prop_map(|entries| {
            let entries: Vec<Value> = entries
                .into_iter()
                .map(|changes| json!({"id": "1000001", "changes": changes}))
                .collect();
            json!({"object": "whatsapp_business_account", "entry": entries})
        })
        .boxed()
}

#[test]
fn the_statuses_only_reader_answers_for_most_status_bodies() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = statuses_notification();
    let (mut answered, mut events) = (0, 0);
    for _ in 0..500 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        if let Some(e) = statuses_only(&serde_json::to_vec(&body).unwrap()) {
            answered += 1;
            events += e.len();
        }
    }
    assert!(
        answered > 200 && events > 150,
        "answered {answered} of 500, {events} events"
    );
}

proptest! {
    #![proptest_config(props::config(CASES))]

    #[test]
    fn the_statuses_only_reader_agrees_with_the_tree_reader_on_status_bodies(
        body in statuses_notification()
    ) {
        fast_agrees(&serde_json::to_vec(&body).unwrap())?;
    }

    #[test]
    fn the_statuses_only_reader_agrees_with_the_tree_reader_on_any_json(body in any_json()) {
        fast_agrees(&serde_json::to_vec(&body).unwrap())?;
    }

    #[test]
    fn the_statuses_only_reader_agrees_with_the_tree_reader_on_notifications_and_their_mutants(
        (p, at, byte, how) in (notification(), any::<prop::sample::Index>(), any::<u8>(), 0u8..4)
    ) {
        let mut raw = serde_json::to_vec(&p.json).unwrap();
        let i = at.index(raw.len());
        match how {
            0 => {}
            1 => raw[i] = byte,
            2 => raw.truncate(i),
            _ => raw.insert(i, byte),
        }
        fast_agrees(&raw)?;
    }
}

/// `odd` is read as the tree reader reads it: by the one-pass reader, if that answers, and
/// by `parse_notification`.
fn read_as_the_tree_reads_it(odd: &str) {
    if let Some(fast) = statuses_only(odd.as_bytes()) {
        assert_eq!(Ok(fast), parse_tree(odd.as_bytes()), "{odd}");
    }
    assert_eq!(
        parse_notification(odd.as_bytes()),
        parse_tree(odd.as_bytes()),
        "{odd}"
    );
}

#[test]
fn the_statuses_only_reader_takes_meta_s_status_body_and_leaves_odd_ones_to_the_tree() {
    let status = |extra: &str| {
        format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"60300000000","phone_number_id":"800"}},"statuses":[{{"id":"wamid.A","status":"delivered","timestamp":"1764000000","recipient_id":"60123456789","pricing":{{"billable":true,"pricing_model":"PMP","category":"utility"}}}}]{extra}}}}}]}}]}}"#
        )
    };
    let plain = status("");
    let fast = statuses_only(plain.as_bytes()).expect("Meta's status body is read without a tree");
    assert_eq!(Ok(fast.clone()), parse_tree(plain.as_bytes()));
    assert!(
        matches!(&fast[..], [MetaEvent::Status(s)] if s.phone_number_id.as_deref() == Some("800"))
    );
    // Each of these is read by the tree reader, whatever it makes of them.
    for odd in [
        status(r#","messages":null"#),
        status(r#","user_preferences":[]"#),
        status(r#","statuses":[]"#),
        status(r#","metadata":null"#),
        plain.replace(r#""field":"messages""#, r#""field":"account_update""#),
        plain.replace(r#""entry":["#, r#""entry":[],"entry":["#),
        plain.replace(
            r#""status":"delivered""#,
            r#""status":"delivered","status":"read""#,
        ),
        // What serde checks when it reads a value but not when it skips one.
        status(r#","x":1e999"#),
        status(&format!(r#","x":{}"#, "9".repeat(400))),
        status(r#","x":"\ud800""#),
        status(r#","x":"a\u0041""#),
        status(",\"x\":\"a\u{1}b\""),
        format!("{plain}\u{0}"),
    ] {
        read_as_the_tree_reads_it(&odd);
    }
    let null_messages = status(r#","messages":null"#);
    assert_eq!(
        statuses_only(null_messages.as_bytes()),
        None,
        "a present `messages` is the tree's"
    );
}

#[test]
fn a_key_given_twice_is_read_as_the_tree_reads_it_or_left_to_the_tree() {
    // Each key the one-pass reader reads, given a second time with other content (the tree
    // keeps the last; serde refused a repeated field). Lists repeated with content of their
    // own: a reader that added both would count a status twice.
    let status = r#"{"id":"wamid.A","status":"delivered","timestamp":"1764000000","recipient_id":"60123456789","biz_opaque_callback_data":"01KAAAAAAAAAAAAAAAAAAAAAAA","pricing":{"pricing_model":"PMP","category":"utility","type":"regular"}}"#;
    let value = format!(
        r#"{{"messaging_product":"whatsapp","metadata":{{"phone_number_id":"800"}},"statuses":[{status}]}}"#
    );
    let change = format!(r#"{{"field":"messages","value":{value}}}"#);
    let entry = format!(r#"{{"id":"1","changes":[{change}]}}"#);
    let body = format!(r#"{{"object":"whatsapp_business_account","entry":[{entry}]}}"#);
    assert!(statuses_only(body.as_bytes()).is_some());
    let other_status = status
        .replace("wamid.A", "wamid.B")
        .replace("delivered", "read");
    let twice = [
        (
            r#""entry":["#.to_owned(),
            format!(r#""entry":[{entry}],"entry":["#),
        ),
        (
            r#""changes":["#.to_owned(),
            format!(r#""changes":[{change}],"changes":["#),
        ),
        (
            r#""statuses":["#.to_owned(),
            format!(r#""statuses":[{other_status}],"statuses":["#),
        ),
        (
            r#""value":{"#.to_owned(),
            format!(r#""value":{value},"value":{{"#),
        ),
        (
            r#""field":"#.to_owned(),
            r#""field":"account_update","field":"#.to_owned(),
        ),
        (
            r#""metadata":{"#.to_owned(),
            r#""metadata":{"phone_number_id":"900"},"metadata":{"#.to_owned(),
        ),
        (
            r#""phone_number_id":"#.to_owned(),
            r#""phone_number_id":"900","phone_number_id":"#.to_owned(),
        ),
        (
            r#""id":"wamid"#.to_owned(),
            r#""id":"wamid.C","id":"wamid"#.to_owned(),
        ),
        (
            r#""status":"#.to_owned(),
            r#""status":"sent","status":"#.to_owned(),
        ),
        (
            r#""timestamp":"#.to_owned(),
            r#""timestamp":"1","timestamp":"#.to_owned(),
        ),
        (
            r#""recipient_id":"#.to_owned(),
            r#""recipient_id":"60111111111","recipient_id":"#.to_owned(),
        ),
        (
            r#""biz_opaque_callback_data":"#.to_owned(),
            r#""biz_opaque_callback_data":null,"biz_opaque_callback_data":"#.to_owned(),
        ),
        (
            r#""pricing":{"#.to_owned(),
            r#""pricing":null,"pricing":{"#.to_owned(),
        ),
        (
            r#""category":"#.to_owned(),
            r#""category":"marketing","category":"#.to_owned(),
        ),
        (
            r#""pricing_model":"#.to_owned(),
            r#""pricing_model":"CBP","pricing_model":"#.to_owned(),
        ),
    ];
    for (key, repeated) in twice {
        let odd = body.replacen(&key, &repeated, 1);
        assert_ne!(odd, body, "{key}");
        read_as_the_tree_reads_it(&odd);
    }
}

#[test]
fn json_nested_beyond_the_reader_s_limit_is_refused_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(parse_notification(deep.as_bytes()), Err(NotJson));
    let nested = format!(
        "{{\"entry\":[{{\"changes\":[{{\"field\":\"messages\",\"value\":{{\"statuses\":[{}1{}]}}}}]}}]}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let events = parse_notification(nested.as_bytes()).unwrap();
    assert!(matches!(&events[..], [MetaEvent::Unknown(u)] if u.piece == "status"));
}
