//! Opt-outs: a recipient who asked not to be messaged (by a tenant). A recipient is named
//! by a phone number, by Meta's business-scoped user id ([`UserId`]), or by both.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{PhoneNumber, TemplateCategory, TenantId};

/// The longest user id accepted: Meta's are a country code, a period and up to 128
/// alphanumeric characters (a parent id adds `ENT.`).
pub const MAX_USER_ID: usize = 140;

/// Meta's business-scoped user id of a WhatsApp user (`user_id`, `from_user_id`,
/// `recipient_user_id`; rolled out in 2026): a two-letter ISO country code, a period, then
/// letters, digits and periods (`US.13491208655302741918`, `US.ENT.11815799212886844830`).
/// Kept exactly as Meta wrote it. Never starts with `+`, so it never reads as a phone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let ok = (4..=MAX_USER_ID).contains(&b.len())
            && b[0].is_ascii_uppercase()
            && b[1].is_ascii_uppercase()
            && b[2] == b'.'
            && b[3..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'.')
            && b[3] != b'.'
            && b[b.len() - 1] != b'.';
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::parse(&s).ok_or_else(|| serde::de::Error::custom("not a WhatsApp user id"))
    }
}

/// What an opt-out (or a user's last inbound time) is stored under: a phone number or a
/// user id. `GET|PUT|DELETE /v1/opt-outs/{key}` take either.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OptOutKey {
    Phone(PhoneNumber),
    User(UserId),
}

impl OptOutKey {
    /// E.164 with `+` (a phone), else a user id; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        if s.starts_with('+') {
            PhoneNumber::parse(s).ok().map(OptOutKey::Phone)
        } else {
            UserId::parse(s).map(OptOutKey::User)
        }
    }

    /// [`Self::parse`] for a key already stored (an item's sort key, a cursor, a key an
    /// existing opt-out may be under): a phone under [`PhoneNumber::parse_stored`]'s
    /// rules, so one kept from before a rule was tightened still reads and is removable.
    pub fn parse_stored(s: &str) -> Option<Self> {
        if s.starts_with('+') {
            PhoneNumber::parse_stored(s).ok().map(OptOutKey::Phone)
        } else {
            UserId::parse(s).map(OptOutKey::User)
        }
    }

    /// Masked for logs: a phone's middle digits, a user id's tail.
    pub fn masked(&self) -> String {
        match self {
            OptOutKey::Phone(p) => p.masked(),
            OptOutKey::User(u) => {
                let head: String = u.as_str().chars().take(5).collect();
                format!("{head}…")
            }
        }
    }
}

impl std::fmt::Display for OptOutKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptOutKey::Phone(p) => write!(f, "{p}"),
            OptOutKey::User(u) => write!(f, "{u}"),
        }
    }
}

impl From<PhoneNumber> for OptOutKey {
    fn from(p: PhoneNumber) -> Self {
        OptOutKey::Phone(p)
    }
}

impl From<UserId> for OptOutKey {
    fn from(u: UserId) -> Self {
        OptOutKey::User(u)
    }
}

/// What an opt-out blocks: every message, or marketing templates only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptOutScope {
    All,
    Marketing,
}

impl OptOutScope {
    pub fn as_str(self) -> &'static str {
        match self {
            OptOutScope::All => "all",
            OptOutScope::Marketing => "marketing",
        }
    }

    /// Whether a message of this kind (`None`: a session text) is blocked.
    pub fn blocks(self, category: Option<TemplateCategory>) -> bool {
        match self {
            OptOutScope::All => true,
            OptOutScope::Marketing => category == Some(TemplateCategory::Marketing),
        }
    }

    /// `all` is wider than `marketing`: an opt-out is never narrowed by a later one.
    pub fn covers(self, other: OptOutScope) -> bool {
        self == OptOutScope::All || self == other
    }
}

/// How the opt-out came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptOutSource {
    /// `PUT /v1/opt-outs/{key}`.
    Api,
    /// An inbound STOP-type text.
    Keyword,
    /// A quick-reply button whose payload is a STOP-type word.
    Button,
    /// Meta reported error 131050 (the user stopped marketing messages).
    #[serde(rename = "meta_131050")]
    Meta131050,
    /// A `user_preferences` webhook: the user stopped marketing messages in WhatsApp.
    MetaUserPreferences,
}

/// Replies that opt the sender out (compared trimmed and case-folded, as the whole text).
pub const STOP_WORDS: [&str; 7] = [
    "stop",
    "stopall",
    "unsubscribe",
    "cancel",
    "end",
    "quit",
    "berhenti",
];
/// Replies that opt the sender back in.
pub const START_WORDS: [&str; 2] = ["start", "mula"];

/// What an inbound reply asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    Stop,
    Start,
}

/// The keyword a whole reply is, if any. "Please stop" is not one.
pub fn keyword(text: &str) -> Option<Keyword> {
    let folded = text.trim().to_lowercase();
    if STOP_WORDS.contains(&folded.as_str()) {
        Some(Keyword::Stop)
    } else if START_WORDS.contains(&folded.as_str()) {
        Some(Keyword::Start)
    } else {
        None
    }
}

/// `created_by` of opt-outs that came through Meta (inbound replies, 131050).
pub const BY_META: &str = "meta";

/// One opt-out. Never the inbound text that caused it. It names the recipient by phone,
/// by user id or by both (at least one: see [`OptOut::key`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptOut {
    pub tenant_id: TenantId,
    #[serde(default, deserialize_with = "crate::domain::stored_phone_opt")]
    pub phone: Option<PhoneNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    pub scope: OptOutScope,
    pub source: OptOutSource,
    /// The API key id that added it, or `meta`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When the recipient's choice it records was made (epoch seconds): Meta's time of
    /// the STOP reply, the marketing preference or the 131050 status that made it, else
    /// the time it was recorded (an API call). A START (or a `resume`) only removes an
    /// opt-out that is not newer than itself. Absent on opt-outs stored before every one
    /// carried a time: any START removes those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_timestamp: Option<i64>,
}

/// When a user last opted back in under one key, as Meta timed it: a START reply
/// (`all_at`), a `resume` of marketing (`marketing_at`). Kept a while (as long as Meta may
/// still deliver an older webhook again), so that an older STOP arriving after a newer
/// START (a redelivery, or two bodies out of order) does not opt the user out again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptedIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketing_at: Option<i64>,
}

impl OptedIn {
    /// Whether this opting back in is newer than the opt-out `o` records, so that `o`
    /// must not be stored: a START overrides an older STOP of any scope, a marketing
    /// `resume` an older marketing stop. Of the same second, the one that arrives last
    /// stands (as a START removes a STOP of its second). An opt-out without a time is
    /// never overridden.
    pub fn overrides(&self, o: &OptOut) -> bool {
        let Some(ts) = o.meta_timestamp else {
            return false;
        };
        self.all_at.is_some_and(|at| at > ts)
            || (o.scope == OptOutScope::Marketing && self.marketing_at.is_some_and(|at| at > ts))
    }
}

impl OptOut {
    /// What it is stored under: the phone when known, else the user id.
    pub fn key(&self) -> Option<OptOutKey> {
        match (&self.phone, &self.user_id) {
            (Some(p), _) => Some(OptOutKey::Phone(p.clone())),
            (None, Some(u)) => Some(OptOutKey::User(u.clone())),
            (None, None) => None,
        }
    }

    /// The key a copy of the opt-out stored under `of` is kept under: its other key (the
    /// user id's copy under the phone, the phone's under the user id), if it has one.
    pub fn copy_key(&self, of: &OptOutKey) -> Option<OptOutKey> {
        match of {
            OptOutKey::Phone(_) => self.user_id.clone().map(OptOutKey::User),
            OptOutKey::User(_) => self.phone.clone().map(OptOutKey::Phone),
        }
    }

    /// The keys whose opting back in holds this opt-out back when it is kept under
    /// `kept_under`: that key, each key it records (the phone, the user id), and
    /// `paired`, the key its user is paired with now, if any; each once, in that order. A
    /// START known by one key only (the other not yet paired with it) is found by the
    /// other when an older STOP is redelivered after Kirim learnt they go together.
    pub fn opted_in_keys(
        &self,
        kept_under: &OptOutKey,
        paired: Option<&OptOutKey>,
    ) -> Vec<OptOutKey> {
        let mut keys = vec![kept_under.clone()];
        let recorded = [
            self.phone.clone().map(OptOutKey::Phone),
            self.user_id.clone().map(OptOutKey::User),
            paired.cloned(),
        ];
        for k in recorded.into_iter().flatten() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }

    /// Whether a START (or a `resume`) of time `at` may remove this opt-out: it is not
    /// newer than `at`, so a late START cannot undo a newer STOP. One stored without a
    /// time (before every opt-out carried one) may be removed by any.
    pub fn replies_not_newer_than(&self, at: i64) -> bool {
        self.meta_timestamp.is_none_or(|t| t <= at)
    }

    /// What to store when `new` is recorded over `existing` (`None`: `existing` stands
    /// as it is). One item folds every opt-out of its key: the wider scope (`all` over
    /// `marketing`) is kept, with its own source and author, of the same scope the newer
    /// one's; the time is the newest, so a START removes it only when it is newer than
    /// every opt-out folded in (erring, as a STOP always does, toward not messaging).
    pub fn folded(existing: Option<&OptOut>, new: &OptOut) -> Option<OptOut> {
        let Some(old) = existing else {
            return Some(new.clone());
        };
        let new_wins = match (old.scope, new.scope) {
            (OptOutScope::All, OptOutScope::Marketing) => false,
            (OptOutScope::Marketing, OptOutScope::All) => true,
            // Strictly newer: the same choice delivered again (Meta's duplicates, a body
            // redelivered after a 500) changes nothing, its first record and time kept.
            _ => new.meta_timestamp > old.meta_timestamp,
        };
        let mut out = if new_wins { new.clone() } else { old.clone() };
        out.meta_timestamp = old.meta_timestamp.max(new.meta_timestamp);
        // A user id or phone one of them learnt is kept.
        out.phone = out
            .phone
            .or_else(|| old.phone.clone().or(new.phone.clone()));
        out.user_id = out
            .user_id
            .or_else(|| old.user_id.clone().or(new.user_id.clone()));
        (&out != old).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marketing_opt_out_blocks_only_marketing_templates() {
        use TemplateCategory::*;
        assert!(OptOutScope::Marketing.blocks(Some(Marketing)));
        assert!(!OptOutScope::Marketing.blocks(Some(Utility)));
        assert!(!OptOutScope::Marketing.blocks(Some(Authentication)));
        assert!(!OptOutScope::Marketing.blocks(None));
        assert!(OptOutScope::All.blocks(None));
        assert!(OptOutScope::All.blocks(Some(Utility)));
    }

    #[test]
    fn sources_serialise_as_the_contract_names_them() {
        assert_eq!(
            serde_json::to_value(OptOutSource::Meta131050).unwrap(),
            "meta_131050"
        );
        assert_eq!(
            serde_json::to_value(OptOutSource::Button).unwrap(),
            "button"
        );
        assert!(OptOutScope::All.covers(OptOutScope::Marketing));
        assert!(!OptOutScope::Marketing.covers(OptOutScope::All));
        assert_eq!(
            serde_json::to_value(OptOutSource::MetaUserPreferences).unwrap(),
            "meta_user_preferences"
        );
    }

    #[test]
    fn a_key_is_an_e164_phone_or_a_meta_user_id_and_nothing_else() {
        assert!(matches!(
            OptOutKey::parse("+60123456789"),
            Some(OptOutKey::Phone(_))
        ));
        for id in [
            "US.13491208655302741918",
            "US.ENT.11815799212886844830",
            "BR.abc9",
        ] {
            assert!(
                matches!(OptOutKey::parse(id), Some(OptOutKey::User(u)) if u.as_str() == id),
                "{id}"
            );
        }
        for bad in [
            "",
            "+6012",
            "60123456789",
            "us.123",
            "US123",
            "US.",
            "US..1",
            "US.1.",
            "US.12 3",
            "US.1/2",
            "U.123",
            &format!("US.{}", "1".repeat(MAX_USER_ID)),
        ] {
            assert_eq!(OptOutKey::parse(bad), None, "{bad:?}");
        }
        let u = OptOutKey::parse("US.13491208655302741918").unwrap();
        assert!(!u.masked().contains("13491208655302741918"));
    }

    #[test]
    fn the_same_stop_delivered_again_changes_nothing_and_a_newer_one_moves_the_time() {
        let first: OptOut = serde_json::from_value(serde_json::json!({
            "tenant_id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "phone": "+60123456789",
            "scope": "all", "source": "keyword", "created_by": "meta",
            "created_at": "2026-01-01T00:00:00Z", "meta_timestamp": 1_700_000_100
        }))
        .unwrap();
        let again = OptOut {
            created_at: first.created_at + chrono::Duration::hours(1),
            ..first.clone()
        };
        assert_eq!(
            OptOut::folded(Some(&first), &again),
            None,
            "kept as first recorded"
        );
        let newer = OptOut {
            meta_timestamp: Some(1_700_000_200),
            ..again.clone()
        };
        let folded = OptOut::folded(Some(&first), &newer).expect("a newer STOP");
        assert_eq!(folded.meta_timestamp, Some(1_700_000_200));
    }

    #[test]
    fn an_opt_out_is_keyed_by_its_phone_else_its_user_id_and_reads_old_items() {
        let old = serde_json::json!({"tenant_id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "phone": "+60123456789",
            "scope": "all", "source": "keyword", "created_by": "meta", "created_at": "2026-01-01T00:00:00Z"});
        let o: OptOut = serde_json::from_value(old).unwrap();
        assert_eq!(o.key().unwrap().to_string(), "+60123456789");
        let by_id = OptOut {
            phone: None,
            user_id: UserId::parse("US.1"),
            ..o.clone()
        };
        assert_eq!(by_id.key().unwrap().to_string(), "US.1");
        assert_eq!(
            OptOut {
                user_id: None,
                ..by_id
            }
            .key(),
            None
        );
    }
}
