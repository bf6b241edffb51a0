//! Opt-outs: a recipient who asked not to be messaged (by a tenant).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{PhoneNumber, TemplateCategory, TenantId};

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
    /// `PUT /v1/opt-outs/{phone}`.
    Api,
    /// An inbound STOP-type text.
    Keyword,
    /// A quick-reply button whose payload is a STOP-type word.
    Button,
    /// Meta reported error 131050 (the user stopped marketing messages).
    #[serde(rename = "meta_131050")]
    Meta131050,
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

/// One opt-out. Never the inbound text that caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptOut {
    pub tenant_id: TenantId,
    pub phone: PhoneNumber,
    pub scope: OptOutScope,
    pub source: OptOutSource,
    /// The API key id that added it, or `meta`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Meta's timestamp (epoch seconds) of the STOP reply that made it, if a reply did:
    /// a START only undoes a STOP that is not newer than itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_timestamp: Option<i64>,
}

impl OptOut {
    /// Whether a STOP reply of Meta's time `at` may replace this opt-out's time: never
    /// with an older one, so a late START cannot undo the newest STOP.
    pub fn replies_not_newer_than(&self, at: i64) -> bool {
        self.meta_timestamp.is_none_or(|t| t <= at)
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
    }
}
