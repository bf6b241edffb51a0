//! A message: its content (which lives only in the dispatch queue and the request to
//! Meta), its template reference, its failure code, and the delivery metadata the table
//! keeps.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{MessageId, MessageStatus, PhoneNumber, TenantId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateCategory {
    Marketing,
    Utility,
    Authentication,
}

impl TemplateCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateCategory::Marketing => "marketing",
            TemplateCategory::Utility => "utility",
            TemplateCategory::Authentication => "authentication",
        }
    }
}

/// What we keep about a template: its name, language and category. Never its parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    pub name: String,
    pub language: String,
    pub category: TemplateCategory,
}

/// A message's content. It travels only inside the dispatch queue message and the
/// request to Meta; it is never stored in a table nor logged (Debug is redacted).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Content {
    Template {
        template: TemplateRef,
        components: Vec<serde_json::Value>,
    },
    Text {
        body: String,
    },
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Template { template, .. } => {
                write!(f, "Template({}, <components redacted>)", template.name)
            }
            Content::Text { .. } => f.write_str("Text(<redacted>)"),
        }
    }
}

impl Content {
    pub fn template_ref(&self) -> Option<&TemplateRef> {
        match self {
            Content::Template { template, .. } => Some(template),
            Content::Text { .. } => None,
        }
    }

    /// The body of Meta's `POST /{phone_number_id}/messages` for `message` of `tenant`,
    /// whose ids go in `biz_opaque_callback_data` (`meta::Callback`): Meta echoes them on
    /// the message's statuses, which find it by them.
    pub fn to_meta_request(
        &self,
        to: &PhoneNumber,
        message: &MessageId,
        tenant: &TenantId,
    ) -> serde_json::Value {
        let mut body = serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to.digits(),
            "biz_opaque_callback_data": super::meta::Callback::data(message, tenant),
        });
        match self {
            Content::Template {
                template,
                components,
            } => {
                body["type"] = "template".into();
                let mut t = serde_json::json!({
                    "name": template.name,
                    "language": {"code": template.language, "policy": "deterministic"},
                });
                if !components.is_empty() {
                    t["components"] = serde_json::Value::Array(components.clone());
                }
                body["template"] = t;
            }
            Content::Text { body: text } => {
                body["type"] = "text".into();
                body["text"] = serde_json::json!({ "body": text });
            }
        }
        body
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub status: MessageStatus,
    pub at: DateTime<Utc>,
}

/// A failure's code: Meta's numeric error code, or one of Kirim's own (snake_case).
/// Serialised as the bare number or string, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorCode {
    Meta(i64),
    Kirim(String),
}

impl From<i64> for ErrorCode {
    fn from(code: i64) -> Self {
        ErrorCode::Meta(code)
    }
}

impl From<&str> for ErrorCode {
    fn from(code: &str) -> Self {
        ErrorCode::Kirim(code.to_owned())
    }
}

impl PartialEq<i64> for ErrorCode {
    fn eq(&self, other: &i64) -> bool {
        matches!(self, ErrorCode::Meta(c) if c == other)
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        matches!(self, ErrorCode::Kirim(c) if c == other)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Meta(c) => write!(f, "{c}"),
            ErrorCode::Kirim(c) => f.write_str(c),
        }
    }
}

/// Meta's (or our own) reason for a failure. Its title is scrubbed whenever it is decoded
/// (`error_text::read_back`): a title kept before stop 60, in a message item or a callback's
/// body, comes back without a number Meta quoted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageError {
    pub code: ErrorCode,
    #[serde(deserialize_with = "super::error_text::deserialize_title")]
    pub title: String,
}

impl MessageError {
    /// Its title as it may leave the platform, for a message to `to`
    /// (`error_text::read_back`).
    pub fn scrub_for(&mut self, to: &PhoneNumber) {
        self.title = super::error_text::read_back(&self.title, Some(to));
    }
}

/// Delivery metadata of one message: what the table holds. No content.
///
/// Decoded, its error's title is scrubbed with the record's own number
/// ([`MessageRecord::scrub_error`]): every reader of a stored record (the API, the export,
/// `recipients.csv`, a campaign's tally, the console, status callbacks) gets it so. Serde's
/// derive is `remote = "Self"` for that: the impls below call it, then scrub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct MessageRecord {
    pub id: MessageId,
    pub tenant_id: TenantId,
    #[serde(deserialize_with = "crate::domain::stored_phone")]
    pub to: PhoneNumber,
    pub template: Option<TemplateRef>,
    pub status: MessageStatus,
    pub error: Option<MessageError>,
    pub events: Vec<StatusEvent>,
    pub wamid: Option<String>,
    pub attempts: u32,
    pub price: i64,
    pub client_reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Epoch seconds after which the record is gone (DynamoDB TTL).
    pub expires_at: Option<i64>,
    /// The broadcast this message belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    /// When a scheduled message is to be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    /// The tenant's phone number it is sent from (`None`: accepted before a tenant had
    /// several numbers; it goes from the tenant's default number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Meta's pricing of it, from the first status webhook that carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// A send slot of its number reserved for it ahead, when a dispatcher found the number
    /// taken for longer than it waits (`service::throttle`): it comes back for that slot
    /// instead of asking again. Internal; no view shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_slot: Option<CarriedSlot>,
    /// The token of the dispatcher claim that last moved it to `sending`, unique to that
    /// claim: a claim whose write landed but whose answer was lost, and whose retry its own
    /// write then refused, knows the message for its own by it (`service::dispatch`).
    /// Internal; no view shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Its failure is counted in the tenant's quality `undeliverable` count (Meta reported
    /// it failed with an undeliverable code, `quality::UNDELIVERABLE_CODES`): set by the
    /// very write that applied that `failed` status, and what a later `delivered` or
    /// `read` reads to take the count back. A failure never counted (the dispatcher's, or
    /// one written before the mark) is never taken back. Internal; no view shows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quality_counted: bool,
    /// Its price was given back when it failed (`MessageStore::fail_and_refund`, in the
    /// same write): a message Meta then reports delivered after all is counted in the
    /// tenant's usage with 0 credits, as the ledger has it. Internal; no view shows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refunded: bool,
    /// When it was handed to Meta or ended as its events had it (`ports::settled_at`) just
    /// before the first status Meta reported late was recorded among them
    /// (`MessageStore::record_overtaken`, the same write): a late `sent` or `delivered`
    /// carries Meta's earlier time, and would take its campaign's `completed_at` back. The
    /// campaign's tally reads this instead of the events when it is set, so that time only
    /// moves forward. Internal; no view shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<DateTime<Utc>>,
}

impl MessageRecord {
    /// Its events as the API shows them (`GET /v1/messages`, the export, `recipients.csv`):
    /// as stored, except that a `delivered` or `read` message with no `sent` event lists
    /// one where Meta's `sent` would go (before its first `failed`, `delivered` or `read`),
    /// at the earliest time of the events it goes before: the message had reached Meta by
    /// then. That
    /// is a message Meta reported delivered without (or before) a `sent` that could be
    /// recorded: one the dispatcher failed while its send's outcome was in doubt, or whose
    /// send's answer was lost. Not stored: Meta's own `sent`, should it come, is recorded
    /// in that place with Meta's time (`status::late_event`) and shown instead.
    pub fn shown_events(&self) -> std::borrow::Cow<'_, [StatusEvent]> {
        use MessageStatus::{Delivered, Failed, Read, Sent};
        let lacks_sent = matches!(self.status, Delivered | Read)
            && !self.events.iter().any(|e| e.status == Sent);
        let first = self
            .events
            .iter()
            .position(|e| matches!(e.status, Failed | Delivered | Read))
            .filter(|_| lacks_sent);
        // At the earliest of the events it goes before: never after a delivery Meta timed
        // before the dispatcher's failure.
        let Some((i, at)) = first.and_then(|i| {
            let at = self.events.get(i..)?.iter().map(|e| e.at).min()?;
            Some((i, at))
        }) else {
            return std::borrow::Cow::Borrowed(&self.events);
        };
        let mut shown = Vec::with_capacity(self.events.len() + 1);
        shown.extend_from_slice(self.events.get(..i).unwrap_or_default());
        shown.push(StatusEvent { status: Sent, at });
        shown.extend_from_slice(self.events.get(i..).unwrap_or_default());
        std::borrow::Cow::Owned(shown)
    }

    /// Its error's title without its number (in every form) or any other run of 7 digits
    /// (`error_text::read_back`): what a title kept before stop 60 may hold. Idempotent.
    pub fn scrub_error(&mut self) {
        if let Some(e) = &mut self.error {
            e.scrub_for(&self.to);
        }
    }
}

impl Serialize for MessageRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        MessageRecord::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for MessageRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut m = MessageRecord::deserialize(d)?;
        m.scrub_error();
        Ok(m)
    }
}

/// A send slot reserved for a message ahead of its next claim: the slot's time, and the
/// attempt count of the claim it was reserved in (a later attempt, after a failed send,
/// does not use it: that slot was spent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedSlot {
    pub at: DateTime<Utc>,
    pub attempt: u32,
}

/// Meta's `pricing` object on a status webhook: its pricing model (`PMP`), category
/// (`marketing`, `utility`, `authentication`, `service`, ...) and type (`regular`,
/// `free_customer_service`, `free_entry_point`). Each is a short word of letters, digits,
/// underscores and hyphens (Meta writes `authentication-international` with one;
/// `Pricing::parse` refuses anything else), so it can sit in a key (`#` separates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    pub pricing_model: String,
    pub category: String,
    #[serde(rename = "type")]
    pub pricing_type: String,
}

impl Pricing {
    /// Meta's words, lower-cased (the model keeps Meta's case: `PMP`); `None` if one is
    /// missing, empty, longer than 64 characters or not a word.
    pub fn parse(pricing_model: &str, category: &str, pricing_type: &str) -> Option<Self> {
        // Checked as given (lower-casing keeps a word a word), then copied once.
        let word = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        (word(pricing_model) && word(category) && word(pricing_type)).then(|| Pricing {
            pricing_model: pricing_model.to_owned(),
            category: category.to_ascii_lowercase(),
            pricing_type: pricing_type.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed message as a build before stop 60 stored it: Meta's words as they came.
    fn stored_before_scrubbing(title: &str) -> serde_json::Value {
        serde_json::json!({
            "id": "01J0000000000000000000000A", "tenant_id": "01J0000000000000000000000B",
            "to": "+60123450303", "template": null, "status": "failed",
            "error": {"code": 131009, "title": title},
            "events": [], "wamid": null, "attempts": 1, "price": 1,
            "client_reference": null, "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z", "expires_at": null,
        })
    }

    #[test]
    fn a_record_read_back_has_its_title_scrubbed_of_its_number_and_any_long_number() {
        let raw =
            "(#131009) Parameter value is not valid: +60123450303 for 60123450303, order 123456789";
        let m: MessageRecord = serde_json::from_value(stored_before_scrubbing(raw)).unwrap();
        let want =
            "(#131009) Parameter value is not valid: <redacted> for <redacted>, order <redacted>";
        assert_eq!(m.error.as_ref().map(|e| e.title.as_str()), Some(want));
        assert_eq!(m.to.as_str(), "+60123450303");
        // Written again and read back: the same (and the derive's own impls are reached,
        // not these ones again).
        let again: MessageRecord =
            serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        // A callback's body holds the error alone: the digit rule.
        let e: MessageError =
            serde_json::from_value(serde_json::json!({"code": 131009, "title": raw})).unwrap();
        assert_eq!(e.title, want);
        // A status kept for a wamid not known yet, before stop 60.
        let kept: crate::ports::PendingError =
            serde_json::from_value(serde_json::json!({"code": 131009, "title": raw})).unwrap();
        assert_eq!(kept.title, want);
    }

    #[test]
    fn a_delivered_or_read_message_without_a_sent_is_shown_with_one_and_only_that() {
        let at = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let mut m: MessageRecord =
            serde_json::from_value(stored_before_scrubbing("Message undeliverable")).unwrap();
        let shown = |m: &MessageRecord| -> Vec<(MessageStatus, i64)> {
            m.shown_events()
                .iter()
                .map(|e| (e.status, e.at.timestamp() - 1_700_000_000))
                .collect()
        };
        use MessageStatus::*;
        let events = |list: &[(MessageStatus, i64)]| -> Vec<StatusEvent> {
            list.iter()
                .map(|&(status, s)| StatusEvent { status, at: at(s) })
                .collect()
        };
        // Failed and not delivered: as stored (it may never have reached Meta).
        m.events = events(&[(Accepted, 0), (Sending, 1), (Failed, 5)]);
        assert_eq!(shown(&m), [(Accepted, 0), (Sending, 1), (Failed, 5)]);
        // Then delivered: a `sent` where Meta's would go, at the failure's time.
        m.status = Delivered;
        m.events = events(&[(Accepted, 0), (Sending, 1), (Failed, 5), (Delivered, 9)]);
        assert_eq!(
            shown(&m),
            [
                (Accepted, 0),
                (Sending, 1),
                (Sent, 5),
                (Failed, 5),
                (Delivered, 9)
            ]
        );
        // Delivered at a time Meta put before the dispatcher's failure: not after it.
        m.status = Delivered;
        m.events = events(&[(Accepted, 0), (Sending, 1), (Failed, 5), (Delivered, 4)]);
        assert_eq!(
            shown(&m),
            [
                (Accepted, 0),
                (Sending, 1),
                (Sent, 4),
                (Failed, 5),
                (Delivered, 4)
            ]
        );
        // Read straight from `sending` (the send's answer lost): at the read's time.
        m.status = Read;
        m.events = events(&[(Accepted, 0), (Sending, 1), (Read, 7)]);
        assert_eq!(
            shown(&m),
            [(Accepted, 0), (Sending, 1), (Sent, 7), (Read, 7)]
        );
        // With a `sent` of its own: as stored, not copied.
        m.events = events(&[(Accepted, 0), (Sending, 1), (Sent, 2), (Read, 7)]);
        assert!(matches!(m.shown_events(), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn meta_pricing_words_are_read_and_anything_else_is_refused() {
        let p = Pricing::parse("PMP", "MARKETING", "regular").unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"pricing_model":"PMP","category":"marketing","type":"regular"})
        );
        assert!(Pricing::parse("PMP", "", "regular").is_none());
        assert!(Pricing::parse("PMP", "utility#x", "regular").is_none());
        // Meta's dearer authentication rate is written with a hyphen: counted, not dropped.
        assert_eq!(
            Pricing::parse("PMP", "AUTHENTICATION-INTERNATIONAL", "regular").map(|p| p.category),
            Some("authentication-international".to_owned())
        );
        assert!(Pricing::parse(&"a".repeat(65), "utility", "regular").is_none());
    }

    proptest::proptest! {
        #![proptest_config(crate::props::config(2_000))]
        /// Checked as given and lower-cased once: the same answer as lower-casing first
        /// and checking the lower-cased words (the definition before that saving).
        #[test]
        fn pricing_reads_as_lower_casing_then_checking_the_words_would(
            model in crate::props::re("[A-Za-z0-9_#é -]{0,66}"),
            category in crate::props::re("[A-Za-z0-9_#é -]{0,66}"),
            kind in crate::props::re("[A-Za-z0-9_#é -]{0,66}"),
        ) {
            let word = |s: &str| {
                (!s.is_empty()
                    && s.len() <= 64
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
                .then(|| s.to_owned())
            };
            let before = (|| {
                Some(Pricing {
                    pricing_model: word(&model)?,
                    category: word(&category.to_ascii_lowercase())?,
                    pricing_type: word(&kind.to_ascii_lowercase())?,
                })
            })();
            proptest::prop_assert_eq!(Pricing::parse(&model, &category, &kind), before);
        }
    }

    #[test]
    fn error_codes_serialise_as_the_bare_number_or_string_and_read_back() {
        for (code, json) in [
            (ErrorCode::Meta(131026), "131026"),
            (ErrorCode::from("outcome_unknown"), "\"outcome_unknown\""),
        ] {
            assert_eq!(serde_json::to_string(&code).unwrap(), json);
            assert_eq!(serde_json::from_str::<ErrorCode>(json).unwrap(), code);
        }
        assert!(ErrorCode::Meta(130429) == 130429);
        assert!(ErrorCode::from("130429") != 130429);
    }

    #[test]
    fn content_debug_output_never_shows_the_text_or_parameters() {
        let c = Content::Text {
            body: "secret-body-123".into(),
        };
        assert!(!format!("{c:?}").contains("secret-body-123"));
        let t = Content::Template {
            template: TemplateRef {
                name: "otp".into(),
                language: "en".into(),
                category: TemplateCategory::Authentication,
            },
            components: vec![
                serde_json::json!({"type":"body","parameters":[{"type":"text","text":"P-42"}]}),
            ],
        };
        assert!(!format!("{t:?}").contains("P-42"));
    }

    #[test]
    fn a_template_becomes_metas_template_message_with_our_ids_as_callback_data() {
        let to = PhoneNumber::parse("+60123456789").unwrap();
        let t = Content::Template {
            template: TemplateRef {
                name: "order_update".into(),
                language: "en_US".into(),
                category: TemplateCategory::Utility,
            },
            components: vec![],
        };
        let (message, tenant) = (MessageId::generate(), TenantId::generate());
        let body = t.to_meta_request(&to, &message, &tenant);
        assert_eq!(body["type"], "template");
        assert_eq!(body["to"], "60123456789");
        assert_eq!(body["template"]["language"]["code"], "en_US");
        assert_eq!(
            body["biz_opaque_callback_data"],
            format!("{message}.{tenant}")
        );
        // What Meta echoes on the message's statuses reads back as both ids.
        let echoed = body["biz_opaque_callback_data"]
            .as_str()
            .unwrap_or_default();
        let callback = crate::domain::meta::Callback::parse(echoed).unwrap();
        assert_eq!(callback.message, message);
        assert_eq!(callback.tenant(), Some(tenant));
        assert!(body["template"].get("components").is_none());
    }
}
