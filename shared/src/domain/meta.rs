//! Meta's webhook notification, parsed once at the edge into typed events.
//!
//! This file owns the shape of what Meta POSTs to `/webhooks/meta` (per
//! `meta/business-messaging-api_v23.0.yaml`): delivery statuses, inbound messages (of
//! which only STOP/START requests matter to Kirim), account-level changes and the
//! template catalogue's changes (`message_template_status_update`,
//! `template_category_update`, `message_template_quality_update`). Services see only
//! [`MetaEvent`]s, never Meta's JSON.
//!
//! Users are named by phone (`recipient_id`, `from`, `wa_id`), by Meta's business-scoped
//! user id (`recipient_user_id`, `from_user_id`, `user_id`; rolled out in 2026, not yet in
//! the v23.0 spec file), or by both: an event without a phone is still an event.
//!
//! Parsing is tolerant: unknown fields are ignored, and a piece Kirim does not understand
//! (an unknown change, a status of another shape or an unknown status word, a list where
//! an object was expected) becomes one [`MetaEvent::Unknown`], which is skipped and
//! counted; the rest of the body is still read. Only a body that is not JSON at all is
//! refused. Inbound text is compared here and dropped: no event carries it.

use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::template::{
    valid_language, valid_name, TemplateChange, TemplateQuality, TemplateStatus,
};
mod scan;

use super::ids::UlidText;
use super::{
    keyword, Keyword, MessageId, MessageStatus, OptOutSource, PhoneNumber, Pricing,
    TemplateCategory, TenantId, UserId,
};

/// Meta's wamids are ~60 characters; anything far longer is not one (and would not fit
/// in a key).
pub const MAX_WAMID: usize = 512;
/// Errors of one status kept at most.
const MAX_ERRORS: usize = 5;

/// Meta's id of a message it accepted (`wamid.…`): non-empty, at most [`MAX_WAMID`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Wamid(String);

impl Wamid {
    pub fn parse(s: &str) -> Option<Self> {
        (!s.is_empty() && s.len() <= MAX_WAMID && !has_control(s)).then(|| Self(s.to_owned()))
    }
    /// What a log line may show of it ([`crate::domain::wamid_tail`]: Meta's wamid holds
    /// the recipient's number).
    pub fn for_logs(&self) -> &str {
        crate::domain::wamid_tail(&self.0)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` holds a control character (`char::is_control`: U+0000–U+001F, U+007F and
/// U+0080–U+009F), read from its bytes: the C1 controls are the two bytes `C2 80`–`C2 9F`
/// in UTF-8, and no other character's encoding holds a byte below 0x20 or 0x7F.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &x)| {
        x < 0x20
            || x == 0x7f
            || (x == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)))
    })
}

impl std::fmt::Display for Wamid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Wamid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Wamid::parse(&s).ok_or_else(|| serde::de::Error::custom("not a wamid"))
    }
}

/// The delivery statuses Meta reports that Kirim tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl MetaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MetaStatus::Sent => "sent",
            MetaStatus::Delivered => "delivered",
            MetaStatus::Read => "read",
            MetaStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sent" => Some(MetaStatus::Sent),
            "delivered" => Some(MetaStatus::Delivered),
            "read" => Some(MetaStatus::Read),
            "failed" => Some(MetaStatus::Failed),
            _ => None,
        }
    }

    /// The message status it moves a message to.
    pub fn message_status(self) -> MessageStatus {
        match self {
            MetaStatus::Sent => MessageStatus::Sent,
            MetaStatus::Delivered => MessageStatus::Delivered,
            MetaStatus::Read => MessageStatus::Read,
            MetaStatus::Failed => MessageStatus::Failed,
        }
    }

    /// Order of application among statuses of one timestamp (a kept status's replay).
    pub fn rank(self) -> u8 {
        match self {
            MetaStatus::Sent => 1,
            MetaStatus::Failed => 2,
            MetaStatus::Delivered => 3,
            MetaStatus::Read => 4,
        }
    }
}

/// One of Meta's error objects on a status: its code and a short title.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaError {
    pub code: i64,
    pub title: String,
}

/// A delivery status of one message Kirim (probably) sent.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusReport {
    /// The tenant's number the change came for (`metadata.phone_number_id`).
    pub phone_number_id: Option<String>,
    pub wamid: Wamid,
    pub status: MetaStatus,
    /// Meta's timestamp (epoch seconds), if it gave a readable one.
    pub timestamp: Option<i64>,
    /// Our message id and its tenant's, echoed back from `biz_opaque_callback_data` (only
    /// if it is in Kirim's form: [`Callback`]).
    pub callback: Option<Callback>,
    /// The recipient (`recipient_id`), when Meta names it by phone number.
    pub recipient: Option<PhoneNumber>,
    /// The recipient's business-scoped user id (`recipient_user_id`), when Meta gives it.
    pub recipient_user_id: Option<UserId>,
    pub errors: Vec<MetaError>,
    /// Meta's pricing of the message, when the status carries a readable one.
    pub pricing: Option<Pricing>,
}

/// What Kirim puts in a send's `biz_opaque_callback_data`, and Meta echoes on each of
/// the message's statuses: the message's id and its tenant's, `{message_id}.{tenant_id}`.
/// Both are ULIDs (Crockford base32: no `.` in either), so the first `.` splits them, and
/// a text with another `.`, or either part not a ULID, is not Kirim's. The tenant lets a
/// status find its message by id when the number it came for names no tenant or another
/// one (removed or taken over since the send; `status::resolve`). 53 characters (Meta
/// allows 512).
///
/// A send from before the tenant was added carries the message id alone (in flight at the
/// deploy, or a status kept then, `PendingStatus`): read still, with no tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    pub message: MessageId,
    /// Held as text (no allocation per status): made a [`TenantId`] only when it is
    /// needed ([`Callback::tenant`]).
    tenant: Option<UlidText>,
}

impl Callback {
    /// The callback data of a send of `message` by `tenant`.
    pub fn data(message: &MessageId, tenant: &TenantId) -> String {
        format!("{message}.{tenant}")
    }

    /// A callback naming `message` and, if given, its tenant.
    pub fn new(message: MessageId, tenant: Option<&TenantId>) -> Self {
        Self {
            message,
            tenant: tenant.and_then(|t| UlidText::parse(t.as_str())),
        }
    }

    /// Kirim's callback data in either form, in any case; anything else is `None`.
    /// By length (a ULID's text is 26 bytes): no search for the `.` on every status.
    pub fn parse(s: &str) -> Option<Self> {
        const ID: usize = 26;
        let (message, tenant) = match s.len() {
            ID => (s, None),
            // (`get`: a slice off a character's boundary is no id, not a panic.)
            len if len == 2 * ID + 1 && s.as_bytes().get(ID) == Some(&b'.') => {
                (s.get(..ID)?, Some(UlidText::parse(s.get(ID + 1..)?)?))
            }
            _ => return None,
        };
        Some(Self {
            message: MessageId::parse(message)?,
            tenant,
        })
    }

    /// The tenant it names (none in the old form).
    pub fn tenant(&self) -> Option<TenantId> {
        self.tenant.map(TenantId::from_text)
    }

    /// Whether it names a tenant other than `tenant`.
    pub fn names_other_than(&self, tenant: Option<&TenantId>) -> bool {
        self.tenant
            .as_ref()
            .is_some_and(|own| tenant.is_none_or(|t| !t.is(own)))
    }

    /// As it was sent (upper case), in its own form: kept with a status (`PendingStatus`)
    /// and read back by [`Callback::parse`].
    pub fn text(&self) -> String {
        match &self.tenant {
            Some(t) => format!("{}.{t}", self.message),
            None => self.message.to_string(),
        }
    }
}

/// How old (seconds) a time Meta gives for a status or a user's choice may be and still be
/// taken as Meta's: 30 days (Meta retries a webhook for 7); older (`0`, a bad timestamp)
/// is taken as the time it arrived (`StatusReport::at`, `optouts::choice_time`).
pub const OLDEST_META_TIME_SECS: i64 = 30 * 86_400;

impl StatusReport {
    /// Meta's time of the status, else `fallback` (now): also for a time no status can
    /// have — more than 30 days before now (Meta retries a webhook for 7) or more than 5
    /// minutes after it, `0` among them — which would file the message's event, and the
    /// usage row of its charge, on a day that expired at once or that no report covers.
    pub fn at(&self, fallback: DateTime<Utc>) -> DateTime<Utc> {
        let now = fallback.timestamp();
        self.timestamp
            .filter(|t| {
                *t > now.saturating_sub(OLDEST_META_TIME_SECS) && *t <= now.saturating_add(300)
            })
            .and_then(|t| Utc.timestamp_opt(t, 0).single())
            .unwrap_or(fallback)
    }

    pub fn has_error(&self, code: i64) -> bool {
        self.errors.iter().any(|e| e.code == code)
    }
}

/// What an inbound message asks of Kirim. Its text is not kept: only whether it was a
/// STOP or START request, and how it came (a typed word or a button).
#[derive(Clone, Debug, PartialEq)]
pub struct InboundMessage {
    pub phone_number_id: Option<String>,
    /// How Meta shows that number (`metadata.display_phone_number`): Kirim learns it for a
    /// number stored without one, since Meta's quality updates name a number only so.
    pub display_phone_number: Option<String>,
    /// The sender, when Meta names them by phone number (`from`, else the matching
    /// contact's `wa_id`).
    pub from: Option<PhoneNumber>,
    /// The sender's business-scoped user id (`from_user_id`, else the matching contact's
    /// `user_id`), when Meta gives it.
    pub from_user_id: Option<UserId>,
    /// Meta's timestamp (epoch seconds), if it gave a readable one.
    pub timestamp: Option<i64>,
    pub request: Option<(Keyword, OptOutSource)>,
}

/// What a user chose in WhatsApp about a kind of message (`user_preferences`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    /// `marketing_messages` `stop`.
    StopMarketing,
    /// `marketing_messages` `resume`.
    ResumeMarketing,
}

/// One `user_preferences` item: a user stopped or resumed marketing messages.
#[derive(Clone, Debug, PartialEq)]
pub struct UserPreference {
    pub phone_number_id: Option<String>,
    pub phone: Option<PhoneNumber>,
    pub user_id: Option<UserId>,
    pub preference: Preference,
    /// Meta's timestamp (epoch seconds), if it gave a readable one.
    pub timestamp: Option<i64>,
}

/// An account-level change (`account_update`) of a WhatsApp Business Account.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountUpdate {
    pub waba_id: String,
    pub event: String,
    pub ban_state: Option<String>,
    /// What an `ACCOUNT_RESTRICTION` restricts (`restriction_info[]`), each as Kirim could
    /// read it; empty when Meta gave none readable.
    pub restrictions: Vec<Restriction>,
    /// Meta's time of the event (the entry's `time`), when given: a tenant resumed after
    /// it is not suspended again by it delivered late or again.
    pub meta_time: Option<i64>,
}

/// One of an `ACCOUNT_RESTRICTION`'s `restriction_info[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restriction {
    /// `restriction_type` (`RESTRICTED_BIZ_INITIATED_MESSAGING`,
    /// `RESTRICTED_CUSTOMER_INITIATED_MESSAGING`, `RESTRICTED_ADD_PHONE_NUMBER_ACTION`...).
    pub kind: String,
    /// `expiration` as Meta gave it (a time stamp, or epoch seconds as RFC 3339), if
    /// readable: for the operator, who resumes the tenant.
    pub expiration: Option<String>,
}

/// The restriction that stops the account's business-initiated messages (templates):
/// the only one Kirim suspends a tenant for.
pub const BIZ_INITIATED_RESTRICTION: &str = "RESTRICTED_BIZ_INITIATED_MESSAGING";

impl AccountUpdate {
    /// Whether Meta stopped (or is about to stop) the account from sending what Kirim
    /// sends: business-initiated messages. An `ACCOUNT_RESTRICTION` does only when it
    /// restricts them (or names no restriction Kirim could read: then it may, and the
    /// account is treated as restricted); a restriction of customer-initiated messages or
    /// of adding numbers alone does not.
    pub fn stops_sending(&self) -> bool {
        match self.event.as_str() {
            "ACCOUNT_RESTRICTION" => {
                self.restrictions.is_empty()
                    || self
                        .restrictions
                        .iter()
                        .any(|r| r.kind == BIZ_INITIATED_RESTRICTION)
            }
            "ACCOUNT_VIOLATION" | "ACCOUNT_DELETED" => true,
            "DISABLED_UPDATE" => self.ban_state.as_deref() != Some("REINSTATE"),
            _ => false,
        }
    }
}

/// A change Meta made to one template of a WhatsApp Business Account's catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateUpdate {
    pub waba_id: String,
    pub name: String,
    /// As the catalogue writes it (`en_US`: Meta's webhooks may write `en-US`).
    pub language: String,
    pub change: TemplateChange,
    /// Meta's time of the change (the entry's `time`, epoch seconds), to apply the changes
    /// of one field in Meta's order whatever order they arrive in.
    pub meta_time: Option<i64>,
}

/// Meta's `phone_number_quality_update` for one business number: what it says of the
/// number's quality and throughput (`None`: nothing said of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberQualityUpdate {
    pub waba_id: String,
    /// When Meta names the number by id (`phone_number_id`, or `metadata.phone_number_id`).
    pub phone_number_id: Option<String>,
    /// How Meta names the number in this webhook (`display_phone_number`).
    pub display_phone_number: Option<String>,
    /// Meta's event (`FLAGGED`, `UNFLAGGED`, `UPGRADE`, `DOWNGRADE`, `THROUGHPUT_UPGRADE`...).
    pub event: String,
    /// `quality_rating` when given (`GREEN`, `YELLOW`, `RED`), else what the event says:
    /// `FLAGGED` is red; `UNFLAGGED` is unknown (Meta says only that the quality is no
    /// longer low, not that it is high).
    pub quality: Option<TemplateQuality>,
    /// `throughput.level` when given (`HIGH`: 1000 a second, `STANDARD`: 80), else
    /// `THROUGHPUT_UPGRADE`: 1000.
    pub throughput_per_sec: Option<u32>,
    /// Meta's time of the change (the entry's `time`, epoch seconds), when given: an older
    /// update than the one applied is refused.
    pub meta_time: Option<i64>,
}

/// A piece of a notification Kirim did not understand: skipped alone and counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    /// Which piece: `body`, `entry`, `change`, `status`, `message` or `field`.
    pub piece: &'static str,
    /// The change's `field`, when known (never content).
    pub field: String,
}

/// One thing Meta told us.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaEvent {
    Status(StatusReport),
    Inbound(InboundMessage),
    UserPreference(UserPreference),
    AccountUpdate(AccountUpdate),
    Template(TemplateUpdate),
    NumberQuality(NumberQualityUpdate),
    Unknown(Unknown),
}

/// The body is not JSON at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the body is not JSON")]
pub struct NotJson;

/// Reads a verified webhook body into events, in the order Meta listed them.
pub fn parse_notification(raw: &[u8]) -> Result<Vec<MetaEvent>, NotJson> {
    match statuses_only(raw) {
        Some(events) => Ok(events),
        None => parse_tree(raw),
    }
}

/// The common body, statuses and nothing else, read in one pass by a cursor over the text
/// (`scan`), without building a JSON tree (the tree was 7% of the webhook's CPU) or
/// going through serde's generic machinery (a tenth of the webhook's CPU was this reader
/// when it did; BENCHMARKS.md "Webhook side by side"). `None` for any other shape, or
/// anything this reader would read differently from [`parse_tree`] (a piece that is not an
/// object, a repeated key, a status that does not read, an escape where a string is read):
/// that body is read by [`parse_tree`], whose answer is the definition (property tests hold
/// the two equal wherever this one answers).
pub(crate) fn statuses_only(raw: &[u8]) -> Option<Vec<MetaEvent>> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut c = scan::Cursor::new(text);
    let mut events = Vec::new();
    let mut entries = None;
    c.object(|c, key| match key {
        "entry" => {
            c.array(|c| scan_entry(c, &mut events))?;
            scan::once(&mut entries, ())
        }
        _ => c.skip(),
    })?;
    c.end()?;
    entries.map(|()| events)
}

fn scan_entry<'a>(c: &mut scan::Cursor<'a>, events: &mut Vec<MetaEvent>) -> Option<()> {
    let mut changes = None;
    c.object(|c, key| match key {
        "changes" => {
            c.array(|c| scan_change(c, events))?;
            scan::once(&mut changes, ())
        }
        _ => c.skip(),
    })?;
    changes
}

/// One change of statuses. Its `field` may come after its `value`, and the value's
/// `metadata` after its `statuses`: the statuses are read first and made events last.
fn scan_change<'a>(c: &mut scan::Cursor<'a>, events: &mut Vec<MetaEvent>) -> Option<()> {
    let (mut field, mut value) = (None, None);
    c.object(|c, key| match key {
        "field" => scan::once(&mut field, c.str_or_null()?),
        "value" => scan::once(&mut value, scan_statuses(c)?),
        _ => c.skip(),
    })?;
    let field = field.flatten().unwrap_or("");
    if TEMPLATE_FIELDS.contains(&field)
        || field == "phone_number_quality_update"
        || field == "account_update"
    {
        return None;
    }
    let (phone_number_id, statuses) = value?;
    for parts in statuses {
        events.push(
            report_of(parts, &phone_number_id)
                .map_or_else(|| unknown("status", field), MetaEvent::Status),
        );
    }
    Some(())
}

/// A change's value: its number's id and its statuses. A value that also carries messages
/// or user preferences (present at all, even `null`) is the tree reader's.
fn scan_statuses<'a>(c: &mut scan::Cursor<'a>) -> Option<(Option<String>, Vec<StatusParts<'a>>)> {
    let (mut metadata, mut statuses) = (None, None);
    c.object(|c, key| match key {
        "metadata" => scan::once(&mut metadata, scan_phone_number_id(c)?),
        "statuses" => {
            let mut list = Vec::new();
            c.array(|c| {
                list.push(scan_status(c)?);
                Some(())
            })?;
            scan::once(&mut statuses, list)
        }
        "messages" | "user_preferences" => None,
        _ => c.skip(),
    })?;
    Some((metadata.flatten(), statuses?))
}

/// `metadata.phone_number_id` if it is a non-empty string; a metadata that is not an
/// object has none.
fn scan_phone_number_id(c: &mut scan::Cursor<'_>) -> Option<Option<String>> {
    if c.peek()? != b'{' {
        c.skip()?;
        return Some(None);
    }
    let mut id = None;
    c.object(|c, key| match key {
        "phone_number_id" => {
            let p = if c.peek()? == b'"' {
                Some(c.str()?)
            } else {
                c.skip()?;
                None
            };
            scan::once(&mut id, p)
        }
        _ => c.skip(),
    })?;
    Some(id.flatten().filter(|p| !p.is_empty()).map(str::to_owned))
}

/// A status object. One that carries `errors` at all (only failed statuses do) is the
/// tree reader's.
fn scan_status<'a>(c: &mut scan::Cursor<'a>) -> Option<StatusParts<'a>> {
    let (mut id, mut status, mut timestamp) = (None, None, None);
    let (mut recipient_id, mut recipient_user_id, mut callback, mut pricing) =
        (None, None, None, None);
    c.object(|c, key| match key {
        "id" => scan::once(&mut id, c.str()?),
        "status" => scan::once(&mut status, c.str()?),
        "timestamp" => scan::once(&mut timestamp, scan_timestamp(c)?),
        "recipient_id" => scan::once(&mut recipient_id, c.str_or_null()?),
        "recipient_user_id" => scan::once(&mut recipient_user_id, c.str_or_null()?),
        "biz_opaque_callback_data" => scan::once(&mut callback, c.str_or_null()?),
        "pricing" => scan::once(&mut pricing, scan_pricing(c)?),
        "errors" => None,
        _ => c.skip(),
    })?;
    Some(StatusParts {
        id: id?,
        status: status?,
        timestamp: timestamp.flatten(),
        callback: callback.flatten(),
        recipient_id: recipient_id.flatten(),
        recipient_user_id: recipient_user_id.flatten(),
        pricing: pricing.flatten(),
        errors: Vec::new(),
    })
}

/// Meta's timestamp: a string of epoch seconds (trimmed), or a number; anything else, or
/// one that is not an integer, is no timestamp.
fn scan_timestamp(c: &mut scan::Cursor<'_>) -> Option<Option<i64>> {
    Some(match c.peek()? {
        b'"' => c.str()?.trim().parse().ok(),
        b'-' | b'0'..=b'9' => {
            let text = c.number()?;
            // serde_json reads `-0` as the float -0.0, no integer: no timestamp, as the tree
            // reader says (not 1970, whose usage day would have expired already).
            if text == "-0" {
                None
            } else {
                text.parse().ok()
            }
        }
        _ => {
            c.skip()?;
            None
        }
    })
}

/// A status's pricing, if it is an object; its words strings or `null`.
fn scan_pricing(c: &mut scan::Cursor<'_>) -> Option<Option<Pricing>> {
    if c.peek()? != b'{' {
        c.skip()?;
        return Some(None);
    }
    let (mut model, mut category, mut kind) = (None, None, None);
    c.object(|c, key| {
        let slot = match key {
            "pricing_model" => &mut model,
            "category" => &mut category,
            "type" => &mut kind,
            _ => return c.skip(),
        };
        let v = c.str_or_null()?;
        scan::once(slot, v)
    })?;
    Some(pricing_from(
        model.flatten(),
        category.flatten(),
        kind.flatten(),
    ))
}

/// Reads any body through a JSON tree: every shape, leniently. [`parse_notification`]
/// uses it for every body the one-pass reader declines (public for `benches/hot_paths`).
pub fn parse_tree(raw: &[u8]) -> Result<Vec<MetaEvent>, NotJson> {
    let body: Value = serde_json::from_slice(raw).map_err(|_| NotJson)?;
    let mut events = Vec::new();
    let entries = match body.get("entry") {
        None if body.is_object() => return Ok(events),
        Some(Value::Array(entries)) => entries,
        _ => {
            events.push(unknown("body", ""));
            return Ok(events);
        }
    };
    for entry in entries {
        let waba_id = match entry.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            events.push(unknown("entry", ""));
            continue;
        };
        let time = entry.get("time").and_then(Value::as_i64);
        for change in changes {
            read_change(&waba_id, time, change, &mut events);
        }
    }
    Ok(events)
}

fn unknown(piece: &'static str, field: &str) -> MetaEvent {
    MetaEvent::Unknown(Unknown {
        piece,
        field: field.chars().take(64).collect(),
    })
}

/// An object of Meta's read into `T`, leniently (unknown fields ignored); anything but an
/// object is none. (serde reads a struct from an array by position too: a status given as
/// `["wamid.X","read"]` would have become a `read`.)
fn lenient<T: DeserializeOwned>(v: &Value) -> Option<T> {
    if !v.is_object() {
        return None;
    }
    T::deserialize(v).ok()
}

fn read_change(waba_id: &str, time: Option<i64>, change: &Value, events: &mut Vec<MetaEvent>) {
    let field = change.get("field").and_then(Value::as_str).unwrap_or("");
    let Some(value) = change.get("value").filter(|v| v.is_object()) else {
        events.push(unknown("change", field));
        return;
    };
    if TEMPLATE_FIELDS.contains(&field) {
        let event = template_update(waba_id, time, field, value).map(MetaEvent::Template);
        events.push(event.unwrap_or_else(|| unknown("change", field)));
        return;
    }
    if field == "phone_number_quality_update" {
        let event = number_quality(waba_id, time, value).map(MetaEvent::NumberQuality);
        events.push(event.unwrap_or_else(|| unknown("change", field)));
        return;
    }
    if field == "account_update" {
        match lenient::<AccountUpdateIn>(value) {
            Some(a) => events.push(MetaEvent::AccountUpdate(AccountUpdate {
                waba_id: waba_id.to_owned(),
                event: a.event.unwrap_or_default(),
                ban_state: a.ban_info.and_then(|b| b.waba_ban_state),
                restrictions: restrictions(a.restriction_info.as_ref()),
                meta_time: time.filter(|t| *t > 0),
            })),
            None => events.push(unknown("change", field)),
        }
        return;
    }
    let phone_number_id = value
        .get("metadata")
        .and_then(|m| m.get("phone_number_id"))
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    let display_phone_number = value
        .get("metadata")
        .and_then(|m| m.get("display_phone_number"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.len() <= 32)
        .map(str::to_owned);
    let statuses = value.get("statuses");
    let messages = value.get("messages");
    let preferences = value.get("user_preferences");
    if statuses.is_none() && messages.is_none() && preferences.is_none() {
        events.push(unknown("field", field));
        return;
    }
    let contacts = contacts(value.get("contacts"));
    for (list, piece) in [
        (statuses, "status"),
        (messages, "message"),
        (preferences, "user_preference"),
    ] {
        match list {
            None => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let event = match piece {
                        "status" => status(item, &phone_number_id).map(MetaEvent::Status),
                        "message" => inbound(item, &phone_number_id, &contacts).map(|mut m| {
                            m.display_phone_number = display_phone_number.clone();
                            MetaEvent::Inbound(m)
                        }),
                        _ => user_preference(item, &phone_number_id).map(MetaEvent::UserPreference),
                    };
                    events.push(event.unwrap_or_else(|| unknown(piece, field)));
                }
            }
            Some(_) => events.push(unknown(piece, field)),
        }
    }
}

/// A change's `contacts` (`wa_id`, `user_id`), read leniently: an odd one is left out.
fn contacts(list: Option<&Value>) -> Vec<(Option<PhoneNumber>, Option<UserId>)> {
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(lenient::<ContactIn>)
                .map(|c| {
                    (
                        meta_phone(c.wa_id.as_deref()),
                        c.user_id.as_deref().and_then(UserId::parse),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn user_preference(item: &Value, phone_number_id: &Option<String>) -> Option<UserPreference> {
    let p: UserPreferenceIn = lenient(item)?;
    let preference = match (
        p.category.to_ascii_lowercase().as_str(),
        p.value.to_ascii_lowercase().as_str(),
    ) {
        ("marketing_messages", "stop") => Preference::StopMarketing,
        ("marketing_messages", "resume") => Preference::ResumeMarketing,
        _ => return None,
    };
    let phone = meta_phone(p.wa_id.as_deref());
    let user_id = p.user_id.as_deref().and_then(UserId::parse);
    if phone.is_none() && user_id.is_none() {
        return None;
    }
    Some(UserPreference {
        phone_number_id: phone_number_id.clone(),
        phone,
        user_id,
        preference,
        timestamp: p.timestamp.as_ref().and_then(epoch_seconds),
    })
}

/// The change fields of Meta's template webhooks.
const TEMPLATE_FIELDS: [&str; 3] = [
    "message_template_status_update",
    "template_category_update",
    "message_template_quality_update",
];

/// One template webhook's change; `None` for a shape or value Kirim does not understand.
fn template_update(
    waba_id: &str,
    time: Option<i64>,
    field: &str,
    value: &Value,
) -> Option<TemplateUpdate> {
    let t: TemplateChangeIn = lenient(value)?;
    let language = t.message_template_language.replace('-', "_");
    if waba_id.is_empty() || !valid_name(&t.message_template_name) || !valid_language(&language) {
        return None;
    }
    let change = match field {
        "message_template_status_update" => {
            let event = t.event?;
            match event.to_ascii_uppercase().as_str() {
                // Archived is a status (`archived`), ordered by Meta's time as every
                // status is: an unarchive restores it (the status Meta lists, read
                // again), and a late archive never undoes it.
                "DELETED" | "PENDING_DELETION" => TemplateChange::Removed,
                "UNARCHIVED" => TemplateChange::Unarchived,
                _ => TemplateChange::Status(TemplateStatus::from_meta(&event)?),
            }
        }
        "template_category_update" => {
            TemplateChange::Category(TemplateCategory::from_meta(&t.new_category?)?)
        }
        "message_template_quality_update" => {
            TemplateChange::Quality(TemplateQuality::from_meta(&t.new_quality_score?))
        }
        _ => return None,
    };
    Some(TemplateUpdate {
        waba_id: waba_id.to_owned(),
        name: t.message_template_name,
        language,
        change,
        meta_time: time.filter(|t| *t > 0),
    })
}

/// One `phone_number_quality_update`; `None` when it names no number Kirim could find.
fn number_quality(waba_id: &str, time: Option<i64>, value: &Value) -> Option<NumberQualityUpdate> {
    let q: NumberQualityIn = lenient(value)?;
    let numeric = |s: String| {
        (!s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
    };
    let phone_number_id = q
        .phone_number_id
        .or_else(|| {
            value
                .get("metadata")
                .and_then(|m| m.get("phone_number_id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .and_then(numeric);
    let display_phone_number = q
        .display_phone_number
        .filter(|d| !d.is_empty() && d.len() <= 32);
    if phone_number_id.is_none() && display_phone_number.is_none() {
        return None;
    }
    let event = q.event.unwrap_or_default().to_ascii_uppercase();
    let quality = match q.quality_rating.as_deref() {
        Some(r) => Some(TemplateQuality::from_meta(r)),
        None => match event.as_str() {
            "FLAGGED" => Some(TemplateQuality::Red),
            // No longer low, which is not high: unknown until Meta rates it.
            "UNFLAGGED" => Some(TemplateQuality::Unknown),
            _ => None,
        },
    };
    let level = q
        .throughput
        .as_ref()
        .and_then(|t| t.get("level"))
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase);
    let throughput_per_sec = match level
        .as_deref()
        .and_then(super::number::throughput_of_level)
    {
        Some(t) => Some(t),
        None if event == "THROUGHPUT_UPGRADE" => Some(super::number::HIGH_THROUGHPUT_PER_SEC),
        None => None,
    };
    Some(NumberQualityUpdate {
        waba_id: waba_id.to_owned(),
        phone_number_id,
        display_phone_number,
        event: event.chars().take(64).collect(),
        quality,
        throughput_per_sec,
        meta_time: time.filter(|t| *t > 0),
    })
}

/// Meta's `pricing` on a status, leniently: a category is needed; the model defaults to
/// `PMP` (per-message pricing) and the type to `regular`.
fn pricing(v: &Value) -> Option<Pricing> {
    // Only an object: serde would read a struct from a list too.
    pricing_of(lenient(v).filter(|_| v.is_object())?)
}

fn pricing_of(p: PricingIn) -> Option<Pricing> {
    pricing_from(
        p.pricing_model.as_deref(),
        p.category.as_deref(),
        p.pricing_type.as_deref(),
    )
}

fn pricing_from(
    model: Option<&str>,
    category: Option<&str>,
    kind: Option<&str>,
) -> Option<Pricing> {
    Pricing::parse(model.unwrap_or("PMP"), category?, kind.unwrap_or("regular"))
}

/// A phone number as Meta writes it: digits without the `+`.
fn meta_phone(digits: Option<&str>) -> Option<PhoneNumber> {
    digits.and_then(|d| PhoneNumber::from_digits(d).ok())
}

fn status(item: &Value, phone_number_id: &Option<String>) -> Option<StatusReport> {
    status_of(lenient(item)?, phone_number_id)
}

/// A status's parts, as read by either reader.
struct StatusParts<'a> {
    id: &'a str,
    status: &'a str,
    timestamp: Option<i64>,
    callback: Option<&'a str>,
    recipient_id: Option<&'a str>,
    recipient_user_id: Option<&'a str>,
    pricing: Option<Pricing>,
    errors: Vec<MetaError>,
}

fn report_of(p: StatusParts<'_>, phone_number_id: &Option<String>) -> Option<StatusReport> {
    Some(StatusReport {
        status: MetaStatus::parse(p.status)?,
        wamid: Wamid::parse(p.id)?,
        phone_number_id: phone_number_id.clone(),
        timestamp: p.timestamp,
        callback: p.callback.and_then(Callback::parse),
        recipient: meta_phone(p.recipient_id),
        recipient_user_id: p.recipient_user_id.and_then(UserId::parse),
        pricing: p.pricing,
        errors: p.errors,
    })
}

fn status_of(s: StatusIn, phone_number_id: &Option<String>) -> Option<StatusReport> {
    // Meta's words, without the status's own recipient (its number in every form, its user
    // id) or any other number (`error_text::scrub`): the title is stored on the message and
    // sent in its callbacks.
    let mut recipient: Vec<String> = s.recipient_user_id.iter().cloned().collect();
    if let Some(id) = &s.recipient_id {
        recipient.push(id.clone());
        if let Some(p) = meta_phone(Some(id)) {
            recipient.extend(super::error_text::phone_forms(&p));
        }
    }
    let quoted: Vec<&str> = recipient.iter().map(String::as_str).collect();
    let errors = s
        .errors
        .into_iter()
        .filter_map(|e| lenient::<ErrorIn>(&e))
        .take(MAX_ERRORS)
        .map(|e| MetaError {
            code: e.code,
            title: super::error_text::title(&e.title.or(e.message).unwrap_or_default(), &quoted),
        })
        .collect();
    report_of(
        StatusParts {
            id: &s.id,
            status: &s.status,
            timestamp: s.timestamp.as_ref().and_then(epoch_seconds),
            callback: s.biz_opaque_callback_data.as_deref(),
            recipient_id: s.recipient_id.as_deref(),
            recipient_user_id: s.recipient_user_id.as_deref(),
            pricing: s.pricing.as_ref().and_then(pricing),
            errors,
        },
        phone_number_id,
    )
}

/// Meta writes timestamps as strings of epoch seconds; numbers are read too.
fn epoch_seconds(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The keyword of a button reply: STOP if its payload, id or title is a STOP word (a STOP
/// wins over a START), else START if one of them is a START word.
fn button_keyword(candidates: &[Option<&str>]) -> Option<Keyword> {
    let words: Vec<Keyword> = candidates
        .iter()
        .flatten()
        .filter_map(|c| keyword(c))
        .collect();
    if words.contains(&Keyword::Stop) {
        Some(Keyword::Stop)
    } else {
        words.first().copied()
    }
}

fn inbound(
    item: &Value,
    phone_number_id: &Option<String>,
    contacts: &[(Option<PhoneNumber>, Option<UserId>)],
) -> Option<InboundMessage> {
    let m: InboundIn = lenient(item)?;
    // Meta's system notice (a user changed their number: `from` is the number left) is no
    // message from the user: it opens no window and teaches no pairing.
    if m.kind.as_deref() == Some("system") {
        return None;
    }
    // The first place that holds a reply decides: typed text, a template's quick-reply
    // button (payload or text), an interactive button reply (id or title).
    let request = if let Some(t) = &m.text {
        keyword(&t.body).map(|k| (k, OptOutSource::Keyword))
    } else if let Some(b) = &m.button {
        button_keyword(&[b.payload.as_deref(), b.text.as_deref()])
            .map(|k| (k, OptOutSource::Button))
    } else if let Some(b) = m.interactive.as_ref().and_then(|i| i.button_reply.as_ref()) {
        button_keyword(&[b.id.as_deref(), b.title.as_deref()]).map(|k| (k, OptOutSource::Button))
    } else {
        None
    };
    let mut from = meta_phone(m.from.as_deref());
    let mut from_user_id = m.from_user_id.as_deref().and_then(UserId::parse);
    // A missing half comes from the contact that matches the other half (or the only one).
    let contact = contacts
        .iter()
        .find(|(p, u)| {
            (from.is_some() && *p == from) || (from_user_id.is_some() && *u == from_user_id)
        })
        .or(match contacts {
            [only] if from.is_none() && from_user_id.is_none() => Some(only),
            _ => None,
        });
    if let Some((p, u)) = contact {
        if from.is_none() {
            from = p.clone();
        }
        if from_user_id.is_none() {
            from_user_id = u.clone();
        }
    }
    Some(InboundMessage {
        phone_number_id: phone_number_id.clone(),
        display_phone_number: None,
        from,
        from_user_id,
        timestamp: m.timestamp.as_ref().and_then(epoch_seconds),
        request,
    })
}

// Meta's shapes, leniently: unknown fields are ignored, only what Kirim reads is named.

#[derive(Deserialize)]
struct TemplateChangeIn {
    message_template_name: String,
    message_template_language: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    new_category: Option<String>,
    #[serde(default)]
    new_quality_score: Option<String>,
}

#[derive(Deserialize)]
struct AccountUpdateIn {
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    ban_info: Option<BanInfoIn>,
    /// Read item by item ([`restrictions`]): one odd item does not hide the others.
    #[serde(default)]
    restriction_info: Option<Value>,
}

/// An `account_update`'s `restriction_info[]`: each item with a readable
/// `restriction_type` (upper-case letters, digits and `_`, at most 64), its `expiration`
/// kept when it is a short printable time stamp or epoch seconds; other items are left out.
fn restrictions(info: Option<&Value>) -> Vec<Restriction> {
    let Some(items) = info.and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .take(16)
        .filter_map(|item| {
            let kind = item.get("restriction_type")?.as_str()?.trim();
            let readable = !kind.is_empty()
                && kind.len() <= 64
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !readable {
                return None;
            }
            let expiration = match item.get("expiration") {
                Some(Value::Number(n)) => n
                    .as_i64()
                    .and_then(|t| DateTime::from_timestamp(t, 0))
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                Some(Value::String(t)) => {
                    let t = t.trim();
                    (!t.is_empty() && t.len() <= 40 && t.bytes().all(|b| b.is_ascii_graphic()))
                        .then(|| t.to_owned())
                }
                _ => None,
            };
            Some(Restriction {
                kind: kind.to_owned(),
                expiration,
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct BanInfoIn {
    #[serde(default)]
    waba_ban_state: Option<String>,
}

#[derive(Deserialize)]
struct StatusIn {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    recipient_user_id: Option<String>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    errors: Vec<Value>,
    #[serde(default)]
    pricing: Option<Value>,
}

#[derive(Deserialize)]
struct PricingIn {
    #[serde(default)]
    pricing_model: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default, rename = "type")]
    pricing_type: Option<String>,
}

#[derive(Deserialize)]
struct NumberQualityIn {
    #[serde(default)]
    phone_number_id: Option<String>,
    #[serde(default)]
    display_phone_number: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    quality_rating: Option<String>,
    #[serde(default)]
    throughput: Option<Value>,
}

#[derive(Deserialize)]
struct ErrorIn {
    code: i64,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct InboundIn {
    /// `system` for Meta's own notices (`user_changed_number`...): not the user writing.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    from_user_id: Option<String>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    text: Option<TextIn>,
    #[serde(default)]
    button: Option<ButtonIn>,
    #[serde(default)]
    interactive: Option<InteractiveIn>,
}

#[derive(Deserialize)]
struct TextIn {
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
struct ButtonIn {
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ContactIn {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct UserPreferenceIn {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    category: String,
    value: String,
    #[serde(default)]
    timestamp: Option<Value>,
}

#[derive(Deserialize)]
struct InteractiveIn {
    #[serde(default)]
    button_reply: Option<ButtonReplyIn>,
}

#[derive(Deserialize)]
struct ButtonReplyIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events(v: Value) -> Vec<MetaEvent> {
        parse_notification(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_status_time_no_status_can_have_is_taken_as_now() {
        let now = Utc
            .timestamp_opt(1_800_000_000, 0)
            .single()
            .unwrap_or_default();
        let body = messages_change(json!({
            "metadata": {"phone_number_id": "pn1"},
            "statuses": [{"id":"wamid.A","status":"delivered","timestamp":"1","recipient_id":"60123456789"}]
        }));
        let ev = events(body);
        let [MetaEvent::Status(report)] = &ev[..] else {
            panic!("{ev:?}")
        };
        let at = |t: Option<i64>| {
            let mut r = report.clone();
            r.timestamp = t;
            r.at(now).timestamp()
        };
        assert_eq!(
            at(Some(1_800_000_000 - 3600)),
            1_800_000_000 - 3600,
            "Meta's"
        );
        assert_eq!(
            at(Some(1_800_000_000 + 60)),
            1_800_000_000 + 60,
            "a clock a bit ahead"
        );
        for bad in [
            Some(0),
            Some(-5),
            Some(1_800_000_000 + 3600),
            Some(1_700_000_000),
            None,
        ] {
            assert_eq!(at(bad), 1_800_000_000, "{bad:?}");
        }
    }

    #[test]
    fn a_statuss_pricing_is_read_and_a_malformed_one_leaves_the_status_alone() {
        let body = messages_change(json!({
            "metadata": {"phone_number_id": "pn1"},
            "statuses": [
                {"id":"wamid.A","status":"sent","timestamp":"1","recipient_id":"60123456789",
                 "pricing":{"billable":true,"pricing_model":"PMP","category":"UTILITY","type":"regular"}},
                {"id":"wamid.B","status":"sent","timestamp":"1","recipient_id":"60123456789",
                 "pricing":["not", "an", "object"]},
            ]
        }));
        let ev = events(body);
        let [MetaEvent::Status(a), MetaEvent::Status(b)] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            a.pricing,
            Pricing::parse("PMP", "utility", "regular"),
            "category lower-cased"
        );
        assert_eq!(b.pricing, None);
    }

    #[test]
    fn metas_hyphenated_authentication_international_category_is_read_by_both_readers() {
        let body = messages_change(json!({
            "metadata": {"phone_number_id": "pn1"},
            "statuses": [
                {"id":"wamid.A","status":"delivered","timestamp":"1","recipient_id":"60123456789",
                 "pricing":{"billable":true,"pricing_model":"PMP","category":"authentication-international","type":"regular"}},
            ]
        }));
        let want = Pricing::parse("PMP", "authentication-international", "regular");
        assert!(want.is_some());
        for ev in [
            parse_notification(body.to_string().as_bytes()).unwrap(),
            parse_tree(body.to_string().as_bytes()).unwrap(),
        ] {
            let [MetaEvent::Status(a)] = &ev[..] else {
                panic!("{ev:?}")
            };
            assert_eq!(a.pricing, want);
        }
    }

    #[test]
    fn phone_number_quality_updates_say_quality_and_throughput() {
        let change = |value: Value| json!({"entry":[{"id":"waba1","changes":[{"field":"phone_number_quality_update","value":value}]}]});
        let ev = events(change(
            json!({"display_phone_number":"15550783881","event":"FLAGGED","current_limit":"TIER_250"}),
        ));
        let [MetaEvent::NumberQuality(q)] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(q.waba_id, "waba1");
        assert_eq!(q.display_phone_number.as_deref(), Some("15550783881"));
        assert_eq!(q.quality, Some(TemplateQuality::Red));
        assert_eq!(q.throughput_per_sec, None);
        let ev = events(change(
            json!({"phone_number_id":"1002","event":"THROUGHPUT_UPGRADE","quality_rating":"YELLOW"}),
        ));
        let [MetaEvent::NumberQuality(q)] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(q.phone_number_id.as_deref(), Some("1002"));
        assert_eq!(q.quality, Some(TemplateQuality::Yellow));
        assert_eq!(q.throughput_per_sec, Some(1000));
        // Names no number at all: skipped alone.
        let ev = events(change(json!({"event":"FLAGGED"})));
        assert!(
            matches!(&ev[..], [MetaEvent::Unknown(u)] if u.field == "phone_number_quality_update")
        );
    }

    #[test]
    fn an_unflagged_number_is_no_longer_red_but_not_taken_for_green_unless_meta_rates_it() {
        let quality = |value: Value| {
            let body = json!({"entry":[{"id":"waba1","changes":[{"field":"phone_number_quality_update","value":value}]}]});
            match &events(body)[..] {
                [MetaEvent::NumberQuality(q)] => q.quality,
                ev => panic!("{ev:?}"),
            }
        };
        assert_eq!(
            quality(
                json!({"phone_number_id":"1002","event":"UNFLAGGED","current_limit":"TIER_1K"})
            ),
            Some(TemplateQuality::Unknown)
        );
        assert_eq!(
            quality(json!({"phone_number_id":"1002","event":"UNFLAGGED","quality_rating":"GREEN"})),
            Some(TemplateQuality::Green)
        );
        assert_eq!(
            quality(
                json!({"phone_number_id":"1002","event":"UNFLAGGED","quality_rating":"YELLOW"})
            ),
            Some(TemplateQuality::Yellow)
        );
        // A number whose quality Kirim knew red is then `unknown`, not left red.
        assert_ne!(
            quality(json!({"display_phone_number":"15550783881","event":"UNFLAGGED"})),
            None
        );
    }

    #[test]
    fn callback_data_names_the_message_and_its_tenant_and_reads_back_as_both() {
        let (id, tenant) = (MessageId::generate(), TenantId::generate());
        let data = Callback::data(&id, &tenant);
        assert_eq!(data, format!("{id}.{tenant}"));
        assert!(data.len() <= 512, "Meta's limit");
        let read = Callback::parse(&data).expect("Kirim's form");
        assert_eq!(read.message, id);
        assert_eq!(read.tenant(), Some(tenant.clone()));
        assert_eq!(read, Callback::new(id.clone(), Some(&tenant)));
        // Kept with a status and read back, it is the same.
        assert_eq!(read.text(), data);
        assert_eq!(Callback::parse(&read.text()), Some(read.clone()));
        // In any case, as ids are.
        assert_eq!(Callback::parse(&data.to_lowercase()), Some(read.clone()));
        // Whether it names another tenant than the number's owner.
        assert!(!read.names_other_than(Some(&tenant)));
        assert!(read.names_other_than(Some(&TenantId::generate())));
        assert!(read.names_other_than(None));
    }

    #[test]
    fn callback_data_of_the_message_id_alone_is_read_still_without_a_tenant() {
        // A send from before the tenant was added to it (in flight at the deploy), or a
        // status kept then.
        let id = MessageId::generate();
        let read = Callback::parse(id.as_str()).expect("the old form");
        assert_eq!(read.message, id);
        assert_eq!(read.tenant(), None);
        assert_eq!(read.text(), id.as_str());
        assert!(!read.names_other_than(None));
        assert!(!read.names_other_than(Some(&TenantId::generate())));
    }

    #[test]
    fn callback_data_not_in_kirims_form_names_nothing() {
        let (id, tenant) = (MessageId::generate(), TenantId::generate());
        for other in [
            String::new(),
            ".".into(),
            format!("{id}."),
            format!(".{tenant}"),
            format!("{id}.{tenant}.{tenant}"),
            format!("{id}..{tenant}"),
            format!("{id}.order-42"),
            format!("order-42.{tenant}"),
            format!("{id} {tenant}"),
            format!("{id}-{tenant}"),
            "order-42".into(),
        ] {
            assert_eq!(Callback::parse(&other), None, "{other:?}");
        }
    }

    fn messages_change(value: Value) -> Value {
        json!({"object":"whatsapp_business_account","entry":[{"id":"waba1","changes":[{"field":"messages","value":value}]}]})
    }

    #[test]
    fn a_status_becomes_a_typed_report_with_its_number_time_and_errors() {
        let id = MessageId::generate();
        let tenant = TenantId::generate();
        let e = events(messages_change(json!({
            "metadata": {"phone_number_id": "pn1"},
            "statuses": [{"id": "wamid.A", "status": "failed", "timestamp": "1700000000",
                "recipient_id": "60123456789", "biz_opaque_callback_data": Callback::data(&id, &tenant),
                "errors": [{"code": 131026, "title": "Message undeliverable", "error_data": {}}],
                "pricing": {"category": "utility"}}]
        })));
        let MetaEvent::Status(s) = &e[0] else {
            panic!("{e:?}")
        };
        assert_eq!(s.phone_number_id.as_deref(), Some("pn1"));
        assert_eq!(s.wamid.as_str(), "wamid.A");
        assert_eq!(s.status, MetaStatus::Failed);
        assert_eq!(s.timestamp, Some(1_700_000_000));
        assert_eq!(s.callback, Some(Callback::new(id, Some(&tenant))));
        assert_eq!(
            s.recipient.as_ref().map(|p| p.to_string()),
            Some("+60123456789".into())
        );
        assert!(s.has_error(131026));
    }

    #[test]
    fn an_unknown_status_word_or_shape_is_one_skipped_piece_and_the_rest_still_reads() {
        let e = events(messages_change(json!({
            "statuses": [{"id": "wamid.A", "status": "deleted"}, {"weird": true}, "text",
                {"id": "wamid.B", "status": "read"}]
        })));
        assert_eq!(e.len(), 4);
        assert!(matches!(&e[0], MetaEvent::Unknown(u) if u.piece == "status"));
        assert!(matches!(&e[1], MetaEvent::Unknown(_)));
        assert!(matches!(&e[2], MetaEvent::Unknown(_)));
        assert!(matches!(&e[3], MetaEvent::Status(s) if s.status == MetaStatus::Read));
    }

    #[test]
    fn an_item_given_as_a_list_is_skipped_never_read_by_position() {
        // serde would read a struct from an array by position: a "read" status, a STOP.
        let e = events(messages_change(json!({
            "statuses": [["wamid.X", "read"]],
            "messages": [["60123456789", "wamid.in", "1700000000", "text"]],
        })));
        assert!(
            e.iter().all(|e| matches!(e, MetaEvent::Unknown(_))),
            "{e:?}"
        );
    }

    #[test]
    fn a_status_timestamp_of_minus_zero_is_no_timestamp_for_either_reader() {
        let body = messages_change(json!({
            "statuses": [{"id": "wamid.A", "status": "read", "timestamp": 0}]
        }))
        .to_string()
        .replace("\"timestamp\":0", "\"timestamp\":-0");
        assert!(body.contains(":-0"), "{body}");
        // The one-pass reader answers a body of statuses only; the tree reader, every
        // body that reader declines.
        for e in [
            parse_notification(body.as_bytes()).unwrap(),
            parse_tree(body.as_bytes()).unwrap(),
        ] {
            let MetaEvent::Status(s) = &e[0] else {
                panic!("{e:?}")
            };
            assert_eq!(s.timestamp, None);
        }
    }

    #[test]
    fn a_list_where_an_object_was_expected_skips_only_that_change() {
        let body = json!({"entry":[{"id":"w","changes":[
            {"field":"messages","value":[1,2]},
            {"field":"messages","value":{"messages":[{"from":"60123456789","type":"text","text":{"body":"STOP"}}]}}
        ]}]});
        let e = events(body);
        assert!(matches!(&e[0], MetaEvent::Unknown(u) if u.piece == "change"));
        let MetaEvent::Inbound(m) = &e[1] else {
            panic!("{e:?}")
        };
        assert_eq!(m.request, Some((Keyword::Stop, OptOutSource::Keyword)));
    }

    #[test]
    fn inbound_text_is_reduced_to_its_request_and_never_kept() {
        let e = events(messages_change(json!({
            "messages": [{"from": "60123456789", "text": {"body": "my secret address"}}]
        })));
        let debug = format!("{e:?}");
        assert!(!debug.contains("secret address"), "{debug}");
        assert!(matches!(&e[0], MetaEvent::Inbound(m) if m.request.is_none()));
    }

    #[test]
    fn button_payloads_and_reply_ids_are_stop_requests_from_a_button() {
        let e = events(messages_change(json!({"messages": [
            {"from": "60123456789", "button": {"payload": "Stop", "text": "Stop promotions"}},
            {"from": "60123456789", "interactive": {"type": "button_reply", "button_reply": {"id": "START", "title": "Resume"}}}
        ]})));
        assert!(
            matches!(&e[0], MetaEvent::Inbound(m) if m.request == Some((Keyword::Stop, OptOutSource::Button)))
        );
        assert!(
            matches!(&e[1], MetaEvent::Inbound(m) if m.request == Some((Keyword::Start, OptOutSource::Button)))
        );
    }

    #[test]
    fn a_status_and_an_inbound_message_without_a_phone_are_read_with_their_user_id() {
        let e = events(messages_change(json!({
            "metadata": {"phone_number_id": "pn1"},
            "statuses": [{"id": "wamid.A", "status": "delivered", "timestamp": "1700000000",
                "recipient_user_id": "US.13491208655302741918"}],
            "messages": [{"from_user_id": "US.13491208655302741918", "id": "wamid.in",
                "timestamp": "1700000001", "type": "text", "text": {"body": "stop"}}]
        })));
        let MetaEvent::Status(s) = &e[0] else {
            panic!("{e:?}")
        };
        assert_eq!(s.recipient, None);
        assert_eq!(
            s.recipient_user_id.as_ref().map(UserId::as_str),
            Some("US.13491208655302741918")
        );
        let MetaEvent::Inbound(m) = &e[1] else {
            panic!("{e:?}")
        };
        assert_eq!(m.from, None);
        assert_eq!(
            m.from_user_id.as_ref().map(UserId::as_str),
            Some("US.13491208655302741918")
        );
        assert_eq!(m.request, Some((Keyword::Stop, OptOutSource::Keyword)));
    }

    #[test]
    fn a_missing_phone_or_user_id_of_a_sender_comes_from_the_matching_contact() {
        let e = events(messages_change(json!({
            "contacts": [{"profile": {"name": "A"}, "wa_id": "60123456789", "user_id": "MY.777"},
                {"wa_id": "60111111111", "user_id": "MY.111"}],
            "messages": [{"from": "60123456789", "text": {"body": "hi"}},
                {"from_user_id": "MY.111", "text": {"body": "hi"}},
                {"from": "60199999999", "from_user_id": "not an id", "text": {"body": "hi"}}]
        })));
        let senders: Vec<(Option<String>, Option<String>)> = e
            .iter()
            .map(|e| match e {
                MetaEvent::Inbound(m) => (
                    m.from.as_ref().map(|p| p.to_string()),
                    m.from_user_id.as_ref().map(|u| u.to_string()),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            senders,
            vec![
                (Some("+60123456789".into()), Some("MY.777".into())),
                (Some("+60111111111".into()), Some("MY.111".into())),
                (Some("+60199999999".into()), None),
            ]
        );
    }

    #[test]
    fn a_button_reply_is_a_stop_when_its_payload_id_or_title_is_a_stop_word() {
        let e = events(messages_change(json!({"messages": [
            {"from": "60123456789", "button": {"payload": "promo-123", "text": "STOP"}},
            {"from": "60123456789", "interactive": {"type": "button_reply", "button_reply": {"id": "btn_2", "title": "Stop"}}},
            {"from": "60123456789", "interactive": {"type": "button_reply", "button_reply": {"id": "START", "title": "Unsubscribe"}}},
            {"from": "60123456789", "button": {"payload": "yes", "text": "Stop promotions"}}
        ]})));
        let requests: Vec<_> = e
            .iter()
            .map(|e| match e {
                MetaEvent::Inbound(m) => m.request,
                other => panic!("{other:?}"),
            })
            .collect();
        let stop = Some((Keyword::Stop, OptOutSource::Button));
        assert_eq!(requests, vec![stop, stop, stop, None]);
    }

    #[test]
    fn user_preferences_become_marketing_stop_or_resume_and_odd_ones_are_skipped() {
        let body = json!({"entry":[{"id":"waba1","changes":[{"field":"user_preferences","value":{
        "messaging_product":"whatsapp","metadata":{"phone_number_id":"pn1"},
        "contacts":[{"wa_id":"60123456789","user_id":"MY.777"}],
        "user_preferences":[
            {"wa_id":"60123456789","user_id":"MY.777","detail":"User requested to stop marketing messages",
             "category":"marketing_messages","value":"stop","timestamp":1731705721},
            {"user_id":"MY.778","category":"marketing_messages","value":"resume","timestamp":"1731705722"},
            {"wa_id":"60123456789","category":"marketing_messages","value":"maybe"},
            {"category":"marketing_messages","value":"stop"},
            {"wa_id":"60123456789","category":"calls","value":"stop"}
        ]}}]}]});
        let e = events(body);
        let MetaEvent::UserPreference(p) = &e[0] else {
            panic!("{e:?}")
        };
        assert_eq!(p.phone_number_id.as_deref(), Some("pn1"));
        assert_eq!(
            p.phone.as_ref().map(|p| p.to_string()).as_deref(),
            Some("+60123456789")
        );
        assert_eq!(p.user_id.as_ref().map(UserId::as_str), Some("MY.777"));
        assert_eq!(p.preference, Preference::StopMarketing);
        assert_eq!(p.timestamp, Some(1_731_705_721));
        assert!(matches!(&e[1], MetaEvent::UserPreference(p)
            if p.preference == Preference::ResumeMarketing && p.phone.is_none() && p.timestamp == Some(1_731_705_722)));
        for odd in &e[2..] {
            assert!(
                matches!(odd, MetaEvent::Unknown(u) if u.piece == "user_preference"),
                "{odd:?}"
            );
        }
        assert_eq!(e.len(), 5);
    }

    #[test]
    fn an_account_update_names_its_waba_and_whether_it_stops_sending() {
        let body = json!({"entry":[{"id":"waba9","changes":[{"field":"account_update",
            "value":{"event":"DISABLED_UPDATE","ban_info":{"waba_ban_state":"SCHEDULE_FOR_DISABLE"}}}]}]});
        let e = events(body);
        let MetaEvent::AccountUpdate(a) = &e[0] else {
            panic!("{e:?}")
        };
        assert_eq!(a.waba_id, "waba9");
        assert!(a.stops_sending());
        let reinstated = AccountUpdate {
            ban_state: Some("REINSTATE".into()),
            ..a.clone()
        };
        assert!(!reinstated.stops_sending());
    }

    #[test]
    fn an_account_restriction_stops_sending_only_when_it_restricts_business_initiated_messages() {
        let restriction = |info: Value| {
            let body = json!({"entry":[{"id":"waba9","changes":[{"field":"account_update",
                "value":{"event":"ACCOUNT_RESTRICTION","restriction_info":info}}]}]});
            match events(body).as_slice() {
                [MetaEvent::AccountUpdate(a)] => a.clone(),
                e => panic!("{e:?}"),
            }
        };
        let others = restriction(json!([
            {"restriction_type":"RESTRICTED_ADD_PHONE_NUMBER_ACTION","expiration":"2026-04-19T13:59:20+0000"},
            {"restriction_type":"RESTRICTED_CUSTOMER_INITIATED_MESSAGING","expiration":1900000000},
            {"restriction_type":"restricted biz initiated messaging"},
            "RESTRICTED_BIZ_INITIATED_MESSAGING"
        ]));
        assert_eq!(
            others.restrictions,
            vec![
                Restriction {
                    kind: "RESTRICTED_ADD_PHONE_NUMBER_ACTION".into(),
                    expiration: Some("2026-04-19T13:59:20+0000".into()),
                },
                Restriction {
                    kind: "RESTRICTED_CUSTOMER_INITIATED_MESSAGING".into(),
                    expiration: Some("2030-03-17T17:46:40Z".into()),
                },
            ]
        );
        assert!(!others.stops_sending(), "{others:?}");
        let templates = restriction(json!([
            {"restriction_type":"RESTRICTED_CUSTOMER_INITIATED_MESSAGING"},
            {"restriction_type":"RESTRICTED_BIZ_INITIATED_MESSAGING","expiration":{"odd":1}}
        ]));
        assert_eq!(templates.restrictions[1].expiration, None);
        assert!(templates.stops_sending());
        // Meta said the account is restricted, not how: it may be its templates.
        assert!(restriction(json!(null)).stops_sending());
        assert!(restriction(json!([{"expiration": 1}])).stops_sending());
    }

    #[test]
    fn template_webhooks_become_typed_catalogue_changes_and_odd_ones_are_skipped() {
        let change = |field: &str, value: Value| json!({"entry":[{"id":"waba9","time":1,"changes":[{"field":field,"value":value}]}]});
        let base = |extra: Value| {
            let mut v = json!({"message_template_id": 123, "message_template_name": "promo_sale",
                "message_template_language": "en-US", "reason": "NONE"});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            v
        };
        let one = |body: Value| events(body).into_iter().next().unwrap();
        let MetaEvent::Template(t) = one(change(
            "message_template_status_update",
            base(json!({"event": "PAUSED"})),
        )) else {
            panic!()
        };
        assert_eq!(
            (t.waba_id.as_str(), t.name.as_str(), t.language.as_str()),
            ("waba9", "promo_sale", "en_US")
        );
        assert_eq!(t.change, TemplateChange::Status(TemplateStatus::Paused));
        assert!(matches!(
            one(change(
                "message_template_status_update",
                base(json!({"event": "DELETED"}))
            )),
            MetaEvent::Template(TemplateUpdate {
                change: TemplateChange::Removed,
                ..
            })
        ));
        assert!(matches!(
            one(change(
                "template_category_update",
                base(json!({"previous_category": "MARKETING", "new_category": "UTILITY"}))
            )),
            MetaEvent::Template(TemplateUpdate {
                change: TemplateChange::Category(TemplateCategory::Utility),
                ..
            })
        ));
        assert!(matches!(
            one(change(
                "message_template_quality_update",
                base(json!({"previous_quality_score": "GREEN", "new_quality_score": "RED"}))
            )),
            MetaEvent::Template(TemplateUpdate {
                change: TemplateChange::Quality(TemplateQuality::Red),
                ..
            })
        ));
        for odd in [
            change(
                "message_template_status_update",
                base(json!({"event": "FLAGGED"})),
            ),
            change(
                "template_category_update",
                base(json!({"new_category": "TRANSACTIONAL"})),
            ),
            change(
                "message_template_status_update",
                json!({"event": "APPROVED"}),
            ),
            change("message_template_quality_update", json!([1])),
        ] {
            assert!(matches!(one(odd), MetaEvent::Unknown(_)));
        }
    }

    #[test]
    fn a_body_that_is_not_json_is_refused_and_one_without_entries_is_empty() {
        assert_eq!(parse_notification(b"not json"), Err(NotJson));
        assert!(events(json!({})).is_empty());
        assert!(
            matches!(&events(json!({"entry": {}}))[0], MetaEvent::Unknown(u) if u.piece == "body")
        );
        assert!(matches!(&events(json!([1]))[0], MetaEvent::Unknown(_)));
    }

    proptest::proptest! {
        #[test]
        fn a_control_character_is_found_in_the_bytes_as_in_the_chars(s in "\\PC{0,8}[\\x00-\\x1f\\x7f-\\u{a0}\\u{2028}]?\\PC{0,8}") {
            proptest::prop_assert_eq!(has_control(&s), s.chars().any(char::is_control), "{:?}", s);
        }
    }

    #[test]
    fn every_character_below_u_0800_is_a_control_by_its_bytes_as_by_char() {
        for c in (0u32..0x800).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            assert_eq!(has_control(&s), c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn wamids_are_bounded_and_validated_when_deserialised() {
        assert!(Wamid::parse("").is_none());
        assert!(Wamid::parse(&"w".repeat(MAX_WAMID + 1)).is_none());
        assert!(serde_json::from_str::<Wamid>("\"\"").is_err());
        assert_eq!(
            serde_json::from_str::<Wamid>("\"wamid.X\"")
                .unwrap()
                .as_str(),
            "wamid.X"
        );
    }
}
