//! Property tests of the request parsers of the service layer (issue 14): send bodies
//! (`SendRequest` through the HTTP layer's `parse_json`, then `send::parse`), broadcast
//! bodies and CSV uploads, and console e-mail addresses.
//!
//! Bodies come from a generator that knows, for each piece it writes, whether it has the
//! right shape and whether its value is within bounds, so each property checks both
//! directions: what is accepted is within the documented bounds, and what is within them
//! is accepted. No error message may repeat a value the client sent.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::domain::{PhoneNumber, TemplateCategory};
use crate::http::extract::parse_json;
use crate::props::{self, re};
use crate::service::send::Draft;

use super::broadcasts::{recipients_from_csv, BroadcastRequest, MAX_RECIPIENTS};
use super::errors::ServiceError;
use super::send::{self, SendRequest};
use super::users::normalise_email;

/// The E.164 rule, written out a second way.
fn is_e164(s: &str) -> bool {
    let Some(d) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&d.chars().count())
        && d.chars().all(|c| c.is_ascii_digit())
        && !d.starts_with('0')
        && !d.starts_with("600")
        && crate::domain::country_code_in_use(d)
}

/// One generated piece of a body: its JSON (`None`: left out), whether serde accepts
/// its shape, and whether its value is within the parser's bounds.
#[derive(Clone, Debug)]
struct Part {
    json: Option<Value>,
    shape: bool,
    valid: bool,
}

impl Part {
    fn new(json: Value, shape: bool, valid: bool) -> Self {
        Part {
            json: Some(json),
            shape,
            valid,
        }
    }
    fn absent(shape: bool) -> Self {
        Part {
            json: None,
            shape,
            valid: true,
        }
    }
}

/// Values where a string belongs: the wrong shape.
fn not_a_string() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        Just(json!(["+60123456789"])),
        Just(json!({"body": "x"})),
    ]
    .boxed()
}

/// A string of `n` copies of one (perhaps multi-byte) character, `n` about `bound`.
fn sized(bound: usize) -> BoxedStrategy<String> {
    (
        prop::sample::select(vec!["a", "é", "漢", "😀", " "]),
        prop_oneof![Just(0usize), Just(1), bound - 1..=bound + 1, 0..bound + 50,],
    )
        .prop_map(|(c, n)| c.repeat(n))
        .boxed()
}

fn to() -> BoxedStrategy<Part> {
    prop_oneof![
        8 => re(&format!("\\+{}", crate::props::VALID_DIGITS))
            .prop_map(|s| {
                let valid = is_e164(&s);
                Part::new(json!(s), true, valid)
            }),
        3 => re("\\+?[0-9 ]{6,17}").prop_map(|s| {
            let valid = is_e164(&s);
            Part::new(json!(s), true, valid)
        }),
        // Not a string, or null: read, and then no E.164 number (`invalid_phone_number`).
        1 => not_a_string().prop_map(|v| Part::new(v, true, false)),
        1 => Just(Part::new(Value::Null, true, false)),
        1 => Just(Part::absent(false)),
    ]
    .boxed()
}

fn text() -> BoxedStrategy<Part> {
    prop_oneof![
        12 => sized(4096).prop_map(|b| {
            let n = b.chars().count();
            Part::new(json!({"body": b}), true, (1..=4096).contains(&n))
        }),
        1 => Just(Part::new(json!({"body": "hello", "preview_url": true}), false, true)),
        1 => Just(Part::new(json!({}), false, true)),
        1 => not_a_string().prop_map(|b| Part::new(json!({"body": b}), false, true)),
        1 => Just(Part::new(json!("hello"), false, true)),
    ]
    .boxed()
}

/// Template names about Meta's limits: `[a-z0-9_]`, 1 to 512 bytes.
fn template_name() -> BoxedStrategy<(String, bool)> {
    prop_oneof![
        6 => re("[a-z0-9_]{1,40}").prop_map(|n| (n, true)),
        2 => (510usize..=514).prop_map(|n| ("a".repeat(n), n <= 512)),
        1 => Just((String::new(), false)),
        2 => re("[a-z_]{0,8}[A-Z \\-.é][a-z_]{0,8}").prop_map(|n| (n, false)),
    ]
    .boxed()
}

/// Language codes: `[A-Za-z_-]`, 2 to 15 bytes.
fn language() -> BoxedStrategy<(String, bool)> {
    prop_oneof![
        4 => prop::sample::select(vec!["en", "en_US", "pt-BR", "ms", "zh_Hant_TW"])
            .prop_map(|l| (l.to_owned(), true)),
        2 => re("[A-Za-z_-]{0,17}").prop_map(|l| {
            let ok = (2..=15).contains(&l.len());
            (l, ok)
        }),
        1 => re("[a-z]{1,3}[0-9 .é][a-z]{0,3}").prop_map(|l| (l, false)),
    ]
    .boxed()
}

fn template() -> BoxedStrategy<Part> {
    let category = prop_oneof![
        9 => prop::sample::select(vec!["marketing", "utility", "authentication"])
            .prop_map(|c| (json!(c), true)),
        1 => prop::sample::select(vec!["Marketing", "service", ""]).prop_map(|c| (json!(c), false)),
        1 => Just((json!(1), false)),
        1 => Just((Value::Null, false)),
    ];
    let components = prop_oneof![
        2 => Just((None, true, true)),
        8 => (prop::collection::vec(component(), 0..24)).prop_map(|c| {
            let ok = c.len() <= 20;
            (Some(Value::Array(c)), true, ok)
        }),
        1 => prop::collection::vec(props::any_json(), 1..4)
            .prop_map(|c| {
                let ok = c.iter().all(component_ok);
                (Some(Value::Array(c)), true, ok)
            }),
        2 => prop::collection::vec(shaped_component(), 1..4)
            .prop_map(|c| {
                let ok = c.iter().all(component_ok);
                (Some(Value::Array(c)), true, ok)
            }),
        1 => Just((Some(json!({"type": "body"})), false, true)),
    ];
    prop_oneof![
        16 => (template_name(), language(), category, components).prop_map(
            |((name, name_ok), (lang, lang_ok), (cat, cat_ok), (comp, comp_shape, comp_ok))| {
                let mut t = json!({"name": name, "language": lang, "category": cat});
                if let Some(c) = comp {
                    t["components"] = c;
                }
                Part::new(t, cat_ok && comp_shape, name_ok && lang_ok && comp_ok)
            }
        ),
        // The category is optional: the catalogue decides it.
        1 => Just(Part::new(json!({"name": "a", "language": "en"}), true, true)),
        1 => Just(Part::new(
            json!({"name": "a", "language": "en", "category": "utility", "namespace": "x"}),
            false,
            true
        )),
        1 => not_a_string().prop_map(|v| Part::new(json!({"name": v, "language": "en", "category": "utility"}), false, true)),
    ]
    .boxed()
}

/// A Meta template component (passed through as given).
/// Components about the shapes Meta's spec requires, good and bad.
fn shaped_component() -> BoxedStrategy<Value> {
    let long = |n: usize| "a".repeat(n);
    prop::sample::select(vec![
        json!({"type": "button", "sub_type": "url", "index": 0,
            "parameters": [{"type": "text", "text": "x"}]}),
        json!({"type": "BUTTON", "sub_type": "quick_reply", "index": "1",
            "parameters": [{"type": "payload", "payload": "p"}]}),
        json!({"type": "button", "sub_type": "url", "parameters": [{"type": "text", "text": "x"}]}),
        json!({"type": "button", "index": 0, "parameters": [{"type": "text", "text": "x"}]}),
        json!({"type": "header", "parameters": [{"type": "image", "image": {"link": "https://e.x/a.jpg"}}]}),
        json!({"type": "body"}),
        json!({"type": "body", "parameters": "x"}),
        json!({"type": "body", "parameters": [1]}),
        json!({"type": "body", "parameters": [{"text": "untyped"}]}),
        json!({"type": "body", "parameters": [{"type": "text", "text": 7}]}),
        json!({"type": "body", "parameters": [{"type": "text", "text": long(32_768)}]}),
        json!({"type": "body", "parameters": [{"type": "text", "text": long(32_769)}]}),
        json!({"parameters": []}),
        json!({"type": 7}),
    ])
    .boxed()
}

/// The shape Meta's spec requires of a component (written apart from
/// `send::check_component`): nested at most 16 levels; a string `type`; a button's `sub_type` (a string) and `index`
/// (a string or a whole number); `parameters`, if any, an array of objects with a string
/// `type`, a `text` one's `text` a string of at most 32,768 characters.
fn component_ok(c: &Value) -> bool {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    if depth(c) > 16 {
        return false;
    }
    let Some(kind) = c.get("type").and_then(Value::as_str) else {
        return false;
    };
    if kind.eq_ignore_ascii_case("button")
        && !(c.get("sub_type").is_some_and(Value::is_string)
            && c.get("index").is_some_and(|i| i.is_string() || i.is_u64()))
    {
        return false;
    }
    match c.get("parameters") {
        None => true,
        Some(Value::Array(ps)) => ps
            .iter()
            .all(|p| match p.get("type").and_then(Value::as_str) {
                Some(t) if t.eq_ignore_ascii_case("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.chars().count() <= 32_768),
                Some(_) => true,
                None => false,
            }),
        Some(_) => false,
    }
}

fn component() -> BoxedStrategy<Value> {
    re("[\\p{L}\\p{N} ]{8,30}")
        .prop_map(|p| json!({"type": "body", "parameters": [{"type": "text", "text": p}]}))
        .boxed()
}

fn client_reference() -> BoxedStrategy<Part> {
    prop_oneof![
        2 => Just(Part::absent(true)),
        // `null` is not "left out": openapi.yaml forbids it (issue 14, item 10).
        1 => Just(Part::new(Value::Null, false, true)),
        6 => sized(256).prop_map(|r| {
            let ok = r.chars().count() <= 256;
            Part::new(json!(r), true, ok)
        }),
        1 => not_a_string().prop_map(|v| Part::new(v, false, true)),
    ]
    .boxed()
}

/// A send body, and what must become of it: whether serde reads it, and then which
/// check (in `parse`'s order) refuses it, if any.
#[derive(Clone, Debug)]
struct SendCase {
    body: Value,
    shape: bool,
    to: Part,
    template: Option<Part>,
    text: Option<Part>,
    reference: Part,
}

fn send_case() -> BoxedStrategy<SendCase> {
    let optional = |p: BoxedStrategy<Part>| {
        prop_oneof![
            2 => Just(None),
            1 => Just(Some(Part::new(Value::Null, false, true))),
            4 => p.prop_map(Some),
        ]
    };
    (
        to(),
        optional(template()),
        optional(text()),
        client_reference(),
        prop::option::weighted(
            0.05,
            prop::sample::select(vec!["To", "extra", "body", "idempotency_key"]),
        ),
    )
        .prop_map(|(to, template, text, reference, unknown)| {
            let mut body = Map::new();
            let mut shape = unknown.is_none();
            for (k, p) in [
                ("to", Some(&to)),
                ("template", template.as_ref()),
                ("text", text.as_ref()),
                ("client_reference", Some(&reference)),
            ] {
                if let Some(p) = p {
                    shape &= p.shape;
                    if let Some(v) = &p.json {
                        body.insert(k.into(), v.clone());
                    }
                }
            }
            if let Some(k) = unknown {
                body.insert(k.into(), json!("x"));
            }
            // A `null` body part makes the case misshapen (refused), so only parts with a
            // value matter when the body is read.
            let present = |p: Option<Part>| p.filter(|p| p.json != Some(Value::Null));
            SendCase {
                body: Value::Object(body),
                shape,
                to,
                template: present(template),
                text: present(text),
                reference,
            }
        })
        .boxed()
}

/// Every string of a JSON value at least 8 characters long: values a client sent, none
/// of which an error message may repeat.
fn long_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.chars().count() >= 8 => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| long_strings(v, out)),
        Value::Object(m) => m.values().for_each(|v| long_strings(v, out)),
        _ => {}
    }
}

fn assert_no_value_echoed(message: &str, body: &Value) -> Result<(), TestCaseError> {
    let mut values = Vec::new();
    long_strings(body, &mut values);
    for v in values {
        prop_assert!(!message.contains(v.as_str()), "{message:?} repeats {v:?}");
    }
    Ok(())
}

fn template_ok(name: &str, language: &str, components: &[Value]) -> bool {
    (1..=512).contains(&name.len())
        && name
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && (2..=15).contains(&language.len())
        && language
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '_' || c == '-')
        && components.len() <= 20
        && components.iter().all(component_ok)
}

proptest! {
    #![proptest_config(props::config(4_000))]

    #[test]
    fn a_send_body_is_accepted_exactly_when_its_shape_and_every_bound_hold(c in send_case()) {
        let raw = serde_json::to_vec(&c.body).unwrap();
        let req = match parse_json::<SendRequest>(&raw) {
            Ok(req) => req,
            Err(e) => {
                prop_assert!(!c.shape, "a well-shaped body was refused: {}", e.message);
                prop_assert_eq!(e.code, "invalid_request");
                return assert_no_value_echoed(&e.message, &c.body);
            }
        };
        prop_assert!(c.shape, "a misshapen body was read: {}", c.body);
        let one_content = c.template.is_some() != c.text.is_some();
        let content_ok = c.template.iter().chain(&c.text).all(|p| p.valid);
        match send::parse(req) {
            Ok((to, content, reference)) => {
                prop_assert!(c.to.valid && c.reference.valid && one_content && content_ok);
                prop_assert!(is_e164(to.as_str()));
                prop_assert_eq!(Some(json!(to.as_str())), c.to.json.clone());
                prop_assert!(reference.as_ref().is_none_or(|r| r.chars().count() <= 256));
                prop_assert_eq!(reference.map(Value::String).unwrap_or(Value::Null),
                    c.reference.json.clone().unwrap_or(Value::Null));
                match content {
                    Draft::Text(body) => {
                        prop_assert!((1..=4096).contains(&body.chars().count()));
                        prop_assert_eq!(Some(&json!(body)), c.text.as_ref().and_then(|t| t.json.as_ref()).and_then(|t| t.get("body")));
                    }
                    Draft::Template(template) => {
                        let components = template.components.clone();
                        prop_assert!(template_ok(&template.name, &template.language, &components));
                        let sent = c.template.as_ref().and_then(|t| t.json.as_ref()).unwrap();
                        prop_assert_eq!(&json!(template.name), &sent["name"]);
                        // As the catalogue writes codes: a `-` read as `_`.
                        let language = sent["language"].as_str().map(|l| l.replace('-', "_"));
                        prop_assert_eq!(Some(template.language.clone()), language);
                        prop_assert_eq!(&serde_json::to_value(template.category).unwrap(), sent.get("category").unwrap_or(&Value::Null));
                        // Passed through as serde_json reads them (its float parsing
                        // may differ from the text in the last bit).
                        let read: Value = serde_json::from_slice(&raw).unwrap();
                        let sent_components = read["template"].get("components").cloned();
                        prop_assert_eq!(Value::Array(components), sent_components.unwrap_or(json!([])));
                    }
                }
            }
            Err(ServiceError::InvalidPhoneNumber) => prop_assert!(!c.to.valid),
            Err(ServiceError::InvalidRequest(m)) => {
                prop_assert!(c.to.valid, "phone numbers are checked first");
                prop_assert!(!(c.reference.valid && one_content && content_ok), "refused: {}", m);
                assert_no_value_echoed(&m, &c.body)?;
            }
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    #[test]
    fn any_json_or_bytes_as_a_send_body_is_read_or_refused_without_panicking(
        raw in prop_oneof![
            props::any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            prop::collection::vec(any::<u8>(), 0..64),
            (send_case(), any::<prop::sample::Index>()).prop_map(|(c, i)| {
                let mut raw = serde_json::to_vec(&c.body).unwrap();
                raw.truncate(i.index(raw.len() + 1));
                raw
            }),
        ]
    ) {
        match parse_json::<SendRequest>(&raw) {
            Ok(req) => {
                if let Ok((to, _, reference)) = send::parse(req) {
                    prop_assert!(is_e164(to.as_str()));
                    prop_assert!(reference.is_none_or(|r| r.chars().count() <= 256));
                }
            }
            Err(e) => {
                if let Ok(v) = serde_json::from_slice::<Value>(&raw) {
                    assert_no_value_echoed(&e.message, &v)?;
                }
            }
        }
    }

    #[test]
    fn a_broadcast_body_is_read_exactly_when_well_shaped_and_its_template_bounded(
        template in template(),
        recipients in prop_oneof![
            prop::collection::vec(to().prop_filter_map("a string", |p| p.json.filter(Value::is_string)), 0..30)
                .prop_map(|r| (Value::Array(r), true)),
            Just((json!("+60123456789"), false)),
            Just((json!([1, 2]), false)),
        ],
        drop_recipients in prop::bool::weighted(0.05),
    ) {
        let mut body = json!({"template": template.json.clone().unwrap()});
        if !drop_recipients {
            body["recipients"] = recipients.0.clone();
        }
        let shape = template.shape && recipients.1 && !drop_recipients;
        let raw = serde_json::to_vec(&body).unwrap();
        match parse_json::<BroadcastRequest>(&raw) {
            Ok(req) => {
                prop_assert!(shape, "a misshapen body was read: {}", body);
                prop_assert_eq!(&json!(req.recipients), &recipients.0);
                match send::parse_template(req.template) {
                    Ok(t) => {
                        prop_assert!(template.valid);
                        prop_assert!(template_ok(&t.name, &t.language, &t.components));
                    }
                    Err(ServiceError::InvalidRequest(m)) => {
                        prop_assert!(!template.valid, "refused: {}", m);
                        assert_no_value_echoed(&m, &body)?;
                    }
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                }
            }
            Err(e) => {
                prop_assert!(!shape, "a well-shaped body was refused: {}", e.message);
                assert_no_value_echoed(&e.message, &body)?;
            }
        }
    }
}

// ---- CSV uploads ---------------------------------------------------------------------

/// A CSV field as a spreadsheet might write it: quoted when it must be (an empty one
/// too: a blank line is no row), sometimes when it need not be, padded with spaces.
fn field(value: &str, quote: bool, pad: &str) -> String {
    let must = value.contains([',', '"', '\n', '\r']) || value.trim().is_empty();
    if quote || must {
        format!("\"{pad}{}{pad}\"", value.replace('"', "\"\""))
    } else {
        format!("{pad}{value}{pad}")
    }
}

/// A recipient as a tenant's spreadsheet holds it: a number, or anything at all.
fn recipient() -> BoxedStrategy<String> {
    prop_oneof![
        4 => re(&format!("\\+{}", crate::props::VALID_DIGITS)),
        1 => re("[ \\t]{0,2}\\+?[0-9 ()-]{0,16}[ \\t]{0,2}"),
        1 => re("[\\p{L}\\p{N}\",\\n\\r ]{0,16}"),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct Upload {
    csv: String,
    recipients: Vec<String>,
}

fn upload() -> BoxedStrategy<Upload> {
    let header = |s: &str, flips: &[bool]| -> String {
        s.chars()
            .zip(flips.iter().cycle())
            .map(|(c, f)| if *f { c.to_ascii_uppercase() } else { c })
            .collect()
    };
    (
        prop::collection::vec(recipient(), 0..40),
        prop::collection::vec(
            re("[a-z_ ]{1,10}")
                .prop_filter("not phone", |h| !h.trim().eq_ignore_ascii_case("phone")),
            0..4,
        ),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<bool>(), 5),
        prop::sample::select(vec!["\n", "\r\n"]),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(move |(recipients, extra, at, flips, eol, trailing, seed)| {
            let col = at.index(extra.len() + 1);
            let mut names: Vec<String> = extra.clone();
            names.insert(col, header("phone", &flips));
            let mut lines = vec![names
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    field(
                        h,
                        (seed >> (i % 64)) & 1 == 1,
                        if seed & 2 == 0 { "" } else { " " },
                    )
                })
                .collect::<Vec<_>>()
                .join(",")];
            for (r, phone) in recipients.iter().enumerate() {
                let bits = seed.rotate_left(r as u32);
                let cells: Vec<String> = (0..names.len())
                    .map(|i| {
                        if i == col {
                            field(phone, bits & 1 == 1, "")
                        } else {
                            field(
                                &format!("v{r}x{i}"),
                                (bits >> (i % 60)) & 4 == 4,
                                if bits & 8 == 8 { " " } else { "" },
                            )
                        }
                    })
                    .collect();
                lines.push(cells.join(","));
            }
            let mut csv = lines.join(eol);
            if trailing {
                csv.push_str(eol);
            }
            Upload {
                csv,
                // As people write numbers: spaces, dashes, dots and brackets dropped.
                recipients: recipients
                    .iter()
                    .map(|r| super::broadcasts::written_number(r))
                    .collect(),
            }
        })
        .boxed()
}

proptest! {
    #![proptest_config(props::config(3_000))]

    #[test]
    fn a_csv_with_a_phone_column_anywhere_gives_back_its_numbers_in_order_as_written(u in upload()) {
        let got = recipients_from_csv(u.csv.as_bytes());
        prop_assert!(got.is_ok(), "{:?} refused: {:?}", u.csv, got.err());
        prop_assert_eq!(got.unwrap(), u.recipients, "{:?}", u.csv);
    }

    #[test]
    fn any_bytes_as_a_csv_are_read_or_refused_without_panicking(
        raw in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            re("(phone|Phone|name|,|\"|\\n|\\r|\\+60123456789| )*").prop_map(String::into_bytes),
            (upload(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(u, i, b)| {
                let mut raw = u.csv.into_bytes();
                let at = i.index(raw.len() + 1);
                raw.insert(at, b);
                raw
            }),
        ]
    ) {
        if let Ok(list) = recipients_from_csv(&raw) {
            prop_assert!(list.len() <= MAX_RECIPIENTS);
            prop_assert!(list.iter().all(|r| r.trim() == r));
        }
    }
}

proptest! {
    // Each case is a CSV of about 10,000 rows.
    #![proptest_config(props::config(24))]

    #[test]
    fn a_csv_over_the_recipient_limit_is_refused_and_one_at_it_is_read(
        extra in 0usize..4, over in any::<bool>()
    ) {
        let rows = if over { MAX_RECIPIENTS + 1 + extra } else { MAX_RECIPIENTS - extra };
        let mut csv = String::from("name,phone\n");
        for i in 0..rows {
            csv.push_str(&format!("n{i},+6012{i:07}\n"));
        }
        match recipients_from_csv(csv.as_bytes()) {
            Ok(list) => {
                prop_assert!(!over);
                prop_assert_eq!(list.len(), rows);
            }
            Err(ServiceError::InvalidRequest(_)) => prop_assert!(over),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}

// ---- console e-mail addresses --------------------------------------------------------

fn email_like() -> BoxedStrategy<String> {
    prop_oneof![
        re("[A-Za-z0-9._%+-]{1,20}@[A-Za-z0-9-]{1,12}(\\.[A-Za-z]{2,6}){1,2}"),
        re("[ \\t]{0,2}[A-Za-z0-9.@:]{0,12}[ \\t]{0,2}"),
        re("[\\p{L}\\p{N}.@ \\t\\n:-]{0,20}"),
        re("\\PC{0,24}"),
        (re("[a-z]{1,3}"), 240usize..260).prop_map(|(s, n)| format!("{}@example.com", s.repeat(n))),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(props::config(5_000))]

    #[test]
    fn a_normalised_email_is_trimmed_lower_case_plausible_and_normalises_to_itself(
        raw in email_like()
    ) {
        if let Some(e) = normalise_email(&raw) {
            prop_assert_eq!(e.trim(), e.as_str());
            prop_assert_eq!(e.to_lowercase(), e.clone());
            prop_assert!((3..=254).contains(&e.len()), "{} bytes", e.len());
            let (local, domain) = e.split_once('@').unwrap();
            prop_assert!(!local.is_empty() && !domain.contains('@'));
            prop_assert!(domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.'));
            prop_assert!(!e.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':'));
            prop_assert_eq!(normalise_email(&e), Some(e.clone()));
        }
    }

    #[test]
    fn an_ascii_address_normalises_the_same_in_any_case_and_padding(
        raw in re("[A-Za-z0-9._%+-]{1,20}@[A-Za-z0-9-]{1,12}(\\.[A-Za-z]{2,6}){1,2}"),
        pad in prop::sample::select(vec!["", " ", "\t", " \n"]),
    ) {
        let expected = normalise_email(&raw);
        prop_assert_eq!(expected.clone(), Some(raw.to_lowercase()));
        prop_assert_eq!(normalise_email(&raw.to_uppercase()), expected.clone());
        prop_assert_eq!(normalise_email(&format!("{pad}{raw}{pad}")), expected);
    }
}

#[test]
fn the_test_s_e164_rule_agrees_with_the_domain_s_on_the_edges() {
    for s in [
        "+60123456789",
        "+1234567",
        "+0123456789",
        "+123456789012345",
        "+1234567890123456",
        "+999123456789",
        "+2101234567",
        "+28123456789",
        "+99812345678",
    ] {
        assert_eq!(is_e164(s), PhoneNumber::parse(s).is_ok(), "{s}");
    }
    assert_eq!(
        serde_json::to_value(TemplateCategory::Authentication).unwrap(),
        "authentication"
    );
}

// ---- Meta's webhook signature header ---------------------------------------------------

/// `sha256=<hex>` of `body` under `secret`, as Meta signs it.
fn meta_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A header as it might arrive, and whether it must verify: the signature under the
/// current or the previous secret (any hex case, spaced), or under another secret, of
/// another body, cut short, mislabelled, or anything.
fn signature_header(body: Vec<u8>) -> BoxedStrategy<(Vec<u8>, Option<String>, bool)> {
    const CURRENT: &str = "app-secret-current";
    const PREVIOUS: &str = "app-secret-previous";
    let b = body.clone();
    let sig = move |secret: &str| meta_signature(secret, &b);
    let (current, previous, other) = (sig(CURRENT), sig(PREVIOUS), sig("another-secret"));
    let flipped = {
        let mut f = body.clone();
        match f.first_mut() {
            Some(byte) => *byte ^= 1,
            None => f.push(0),
        }
        meta_signature(CURRENT, &f)
    };
    let upper = any::<bool>();
    let pad = prop::sample::select(vec!["", " ", "\t"]);
    prop_oneof![
        3 => (prop::sample::select(vec![current.clone(), previous]), upper, pad)
            .prop_map(|(s, up, pad)| {
                let s = if up { s.to_uppercase() } else { s };
                (Some(format!("sha256={pad}{s}{pad}")), true)
            }),
        1 => Just((Some(format!("sha256={other}")), false)),
        1 => Just((Some(format!("sha256={flipped}")), false)),
        1 => (0usize..64).prop_map({
            let c = current.clone();
            move |n| (Some(format!("sha256={}", &c[..n])), false)
        }),
        1 => prop::sample::select(vec!["SHA256=", "sha1=", "", "sha256:", " sha256="])
            .prop_map({
                let c = current.clone();
                move |p| (Some(format!("{p}{c}")), false)
            }),
        1 => Just((Some(format!("sha256={current}0")), false)),
        1 => re("\\PC{0,80}").prop_map(|h| (Some(h), false)),
        1 => Just((None, false)),
    ]
    .prop_map(move |(h, ok)| (body.clone(), h, ok))
    .boxed()
}

#[test]
fn a_webhook_signature_verifies_exactly_when_it_is_the_body_s_hmac_under_the_current_or_previous_secret(
) {
    use crate::secret::Secret;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deps = crate::wiring::memory_deps(
        crate::config::Settings::default(),
        std::sync::Arc::new(crate::ports::SystemClock),
    )
    .unwrap();
    let name = deps.settings.meta_app_secret.clone();
    rt.block_on(async {
        let store = deps.secrets.store();
        store
            .put_secret(&name, &Secret::new("app-secret-previous"))
            .await
            .unwrap();
        store
            .put_secret(&name, &Secret::new("app-secret-current"))
            .await
            .unwrap();
    });
    let cases = prop::collection::vec(any::<u8>(), 0..300).prop_flat_map(signature_header);
    let mut runner = proptest::test_runner::TestRunner::new(props::config(2_000));
    let result = runner.run(&cases, |(body, header, expected)| {
        let verified = rt.block_on(super::webhook::verify_signature(
            &deps,
            &body,
            header.as_deref(),
        ));
        prop_assert_eq!(verified.ok(), Some(expected), "{:?}", header);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
