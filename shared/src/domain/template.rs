//! The template catalogue's domain: what Meta knows of a WABA's templates (status,
//! category, quality, how many body parameters), read tolerantly from Meta's
//! `GET /{version}/{waba_id}/message_templates` pages, and the changes Meta's template
//! webhooks make. Services see these types, never Meta's JSON.
//!
//! Tolerant: a template of a shape Kirim does not understand (no name, another category
//! such as the retired `TRANSACTIONAL`, a status that cannot be sent such as `DELETED`)
//! is skipped and counted, never fatal; unknown fields are ignored.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TemplateCategory;

/// Where a template stands at Meta. Only `approved` ones can be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateStatus {
    Approved,
    Pending,
    Rejected,
    Paused,
    Disabled,
    /// Archived at Meta (by the business, or by Meta after a year unused): not sendable,
    /// and restored by an unarchive (Meta's `UNARCHIVED`: [`TemplateChange::Unarchived`]),
    /// so kept, not removed.
    Archived,
}

impl TemplateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateStatus::Approved => "approved",
            TemplateStatus::Pending => "pending",
            TemplateStatus::Rejected => "rejected",
            TemplateStatus::Paused => "paused",
            TemplateStatus::Disabled => "disabled",
            TemplateStatus::Archived => "archived",
        }
    }

    /// Kirim's own word (query parameters, the sandbox).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approved" => Some(TemplateStatus::Approved),
            "pending" => Some(TemplateStatus::Pending),
            "rejected" => Some(TemplateStatus::Rejected),
            "paused" => Some(TemplateStatus::Paused),
            "disabled" => Some(TemplateStatus::Disabled),
            "archived" => Some(TemplateStatus::Archived),
            _ => None,
        }
    }

    /// Meta's word for it (`status` of a listed template, `event` of a status webhook), in
    /// any case. `None` for a state that is not a catalogue status (`DELETED`, ...), and
    /// for `UNARCHIVED`, which names none: the template is back to whatever status it had
    /// before its archiving (approved, paused, rejected...), which only Meta's list tells.
    pub fn from_meta(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "APPROVED" | "REINSTATED" => Some(TemplateStatus::Approved),
            "PENDING" | "IN_APPEAL" => Some(TemplateStatus::Pending),
            "REJECTED" => Some(TemplateStatus::Rejected),
            "PAUSED" => Some(TemplateStatus::Paused),
            "DISABLED" => Some(TemplateStatus::Disabled),
            "ARCHIVED" => Some(TemplateStatus::Archived),
            _ => None,
        }
    }
}

/// Meta's quality rating of a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateQuality {
    Green,
    Yellow,
    Red,
    Unknown,
}

impl TemplateQuality {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateQuality::Green => "green",
            TemplateQuality::Yellow => "yellow",
            TemplateQuality::Red => "red",
            TemplateQuality::Unknown => "unknown",
        }
    }

    /// Kirim's word or Meta's (`GREEN`), in any case; anything else is `unknown`.
    pub fn from_meta(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "green" | "high" => TemplateQuality::Green,
            "yellow" | "medium" => TemplateQuality::Yellow,
            "red" | "low" => TemplateQuality::Red,
            _ => TemplateQuality::Unknown,
        }
    }
}

impl TemplateCategory {
    /// Kirim's word or Meta's (`MARKETING`), in any case; retired categories are `None`.
    pub fn from_meta(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "marketing" => Some(TemplateCategory::Marketing),
            "utility" => Some(TemplateCategory::Utility),
            "authentication" => Some(TemplateCategory::Authentication),
            _ => None,
        }
    }
}

/// A template name as Meta allows them: 1 to 512 lowercase letters, digits, underscores.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A language code such as `en` or `en_US` (2 to 15 letters, `_` or `-`).
pub fn valid_language(language: &str) -> bool {
    (2..=15).contains(&language.len())
        && language
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-')
}

/// One template as Meta lists it, understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaTemplate {
    pub name: String,
    pub language: String,
    pub category: TemplateCategory,
    pub status: TemplateStatus,
    pub quality: TemplateQuality,
    pub body_parameters: u32,
    /// Meta's template id, when given.
    pub meta_id: Option<String>,
}

/// One page of Meta's template list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaTemplatePage {
    pub templates: Vec<MetaTemplate>,
    /// Templates of a shape Kirim does not understand, skipped.
    pub skipped: usize,
    /// The cursor of the next page (`paging.cursors.after`), only when Meta says there is
    /// one (`paging.next`); `None` on the last page.
    pub after: Option<String>,
}

/// Reads one page of `GET /{version}/{waba_id}/message_templates`. `None` when the body
/// is not a page at all (no `data` list).
pub fn parse_template_page(body: &Value) -> Option<MetaTemplatePage> {
    let data = body.get("data")?.as_array()?;
    let mut page = MetaTemplatePage::default();
    for item in data {
        match meta_template(item) {
            Some(t) => page.templates.push(t),
            None => page.skipped += 1,
        }
    }
    let paging = body.get("paging");
    let has_next = paging
        .and_then(|p| p.get("next"))
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if has_next {
        // A next page that cannot be followed is no complete list: unreadable, so that
        // the sync removes nothing rather than everything on the pages it never read.
        let after = paging
            .and_then(|p| p.pointer("/cursors/after"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty() && a.len() <= 1024)?;
        page.after = Some(after.to_owned());
    }
    Some(page)
}

#[derive(Deserialize)]
struct TemplateIn {
    name: String,
    language: String,
    category: String,
    status: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    components: Option<Value>,
    #[serde(default)]
    quality_score: Option<Value>,
}

fn meta_template(item: &Value) -> Option<MetaTemplate> {
    let t = TemplateIn::deserialize(item).ok()?;
    let language = t.language.replace('-', "_");
    if !valid_name(&t.name) || !valid_language(&language) {
        return None;
    }
    let body_parameters = match &t.components {
        None | Some(Value::Null) => 0,
        Some(Value::Array(components)) => components
            .iter()
            .filter(|c| {
                c.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|ty| ty.eq_ignore_ascii_case("body"))
            })
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .map(placeholders)
            .sum(),
        Some(_) => return None,
    };
    let quality = match &t.quality_score {
        Some(Value::Object(q)) => q
            .get("score")
            .and_then(Value::as_str)
            .map_or(TemplateQuality::Unknown, TemplateQuality::from_meta),
        Some(Value::String(s)) => TemplateQuality::from_meta(s),
        _ => TemplateQuality::Unknown,
    };
    let meta_id = match &t.id {
        Some(Value::String(s)) if s.len() <= 64 => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Some(MetaTemplate {
        name: t.name,
        language,
        category: TemplateCategory::from_meta(&t.category)?,
        status: TemplateStatus::from_meta(&t.status)?,
        quality,
        body_parameters,
        meta_id,
    })
}

/// How many distinct `{{…}}` parameters a template text has (`{{1}}` or `{{name}}`).
pub fn placeholders(text: &str) -> u32 {
    let mut seen = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        let inner = after[..end].trim();
        if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            seen.insert(inner.to_owned());
        }
        rest = &after[end + 2..];
    }
    u32::try_from(seen.len()).unwrap_or(u32::MAX)
}

/// How many body parameters a send's components give: the `parameters` of every
/// component whose `type` is `body`, in any case (as Meta reads them).
pub fn body_parameters_given(components: &[Value]) -> u32 {
    let n: usize = components
        .iter()
        .filter(|c| {
            c.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("body"))
        })
        .map(|c| {
            c.get("parameters")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        })
        .sum();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What one of Meta's template webhooks changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateChange {
    /// `message_template_status_update` with a catalogue status.
    Status(TemplateStatus),
    /// `message_template_status_update` saying the template is gone (`DELETED`,
    /// `PENDING_DELETION`, `ARCHIVED`): it leaves the catalogue.
    Removed,
    /// `template_category_update`: Meta recategorised it.
    Category(TemplateCategory),
    /// `message_template_quality_update`.
    Quality(TemplateQuality),
    /// Its body's parameter count, as a re-read of the template from Meta after its
    /// approval found it (no webhook carries a template's components: an edit approved
    /// again may take another number of parameters). Ordered by the read's time, as
    /// webhooks' changes are by Meta's.
    BodyParameters(u32),
    /// `message_template_status_update` `UNARCHIVED`: back to the status it had before its
    /// archiving, which the webhook does not say. Not a write: the template stays
    /// `archived` (not sendable) until its re-read from Meta's list applies the status
    /// listed (`templates::refresh`), or a sync reads it.
    Unarchived,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_page_is_read_with_its_cursor_only_when_meta_says_there_is_a_next_one() {
        let body = json!({"data": [
            {"name": "order_update", "language": "en_US", "category": "UTILITY", "status": "APPROVED",
             "id": "1", "components": [{"type": "HEADER", "text": "Hi {{1}}"},
                {"type": "BODY", "text": "Order {{1}} ships on {{2}}; again {{1}}"}],
             "quality_score": {"score": "YELLOW", "date": 1}, "surprise": [1]},
            {"name": "legacy", "language": "en", "category": "TRANSACTIONAL", "status": "APPROVED"},
            {"name": "gone", "language": "en", "category": "UTILITY", "status": "DELETED"},
            {"name": "Bad Name", "language": "en", "category": "UTILITY", "status": "APPROVED"},
            "not an object",
            {"name": "login_code", "language": "en-US", "category": "authentication", "status": "paused"}
        ], "paging": {"cursors": {"before": "A", "after": "B"}, "next": "https://graph/x?after=B"}});
        let page = parse_template_page(&body).unwrap();
        assert_eq!(page.templates.len(), 2);
        assert_eq!(page.skipped, 4);
        assert_eq!(page.after.as_deref(), Some("B"));
        let t = &page.templates[0];
        assert_eq!(t.category, TemplateCategory::Utility);
        assert_eq!(t.status, TemplateStatus::Approved);
        assert_eq!(t.quality, TemplateQuality::Yellow);
        assert_eq!(t.body_parameters, 2, "the header's are not the body's");
        assert_eq!(page.templates[1].language, "en_US");
        assert_eq!(page.templates[1].quality, TemplateQuality::Unknown);

        let last = json!({"data": [], "paging": {"cursors": {"before": "A", "after": "B"}}});
        assert_eq!(parse_template_page(&last).unwrap().after, None);
        assert!(parse_template_page(&json!({"error": {}})).is_none());
        // A next page named without a cursor to read it by is no complete list.
        for paging in [
            json!({"next": "https://graph/x"}),
            json!({"cursors": {"after": ""}, "next": "https://graph/x"}),
            json!({"cursors": {"after": "a".repeat(1025)}, "next": "https://graph/x"}),
        ] {
            let body = json!({"data": [], "paging": paging});
            assert!(parse_template_page(&body).is_none(), "{paging}");
        }
    }

    #[test]
    fn body_parameters_are_counted_in_body_components_of_any_case() {
        let c = vec![
            json!({"type": "BODY", "parameters": [{"type": "text", "text": "a"}]}),
            json!({"type": "header", "parameters": [{"type": "text", "text": "b"}]}),
            json!({"type": "Body", "parameters": [{"type": "text", "text": "c"}]}),
        ];
        assert_eq!(body_parameters_given(&c), 2);
        assert_eq!(body_parameters_given(&[]), 0);
        assert_eq!(placeholders("no parameters"), 0);
        assert_eq!(placeholders("{{first_name}} and {{ 2 }} and {{"), 2);
    }
}
