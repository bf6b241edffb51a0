//! The template catalogue: what Meta knows of each WhatsApp Business Account's templates
//! (API.md "Template catalogue"), kept per WABA, name and language.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{TemplateCategory, TemplateChange, TemplateQuality, TemplateStatus};
use crate::store_error::StoreError;

/// One template of a WABA's catalogue. Never its text or examples: only what deciding a
/// send needs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogueTemplate {
    pub waba_id: String,
    pub name: String,
    pub language: String,
    pub category: TemplateCategory,
    pub status: TemplateStatus,
    pub quality: TemplateQuality,
    /// How many parameters its body takes.
    pub body_parameters: u32,
    /// Meta's template id, when known.
    #[serde(default)]
    pub meta_id: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Epoch seconds (the Messages class from the last sync or change).
    pub expires_at: Option<i64>,
}

impl CatalogueTemplate {
    /// The template with one change applied.
    pub fn with(mut self, change: TemplateChange) -> Self {
        match change {
            TemplateChange::Status(s) => self.status = s,
            TemplateChange::Category(c) => self.category = c,
            TemplateChange::Quality(q) => self.quality = q,
            TemplateChange::BodyParameters(n) => self.body_parameters = n,
            TemplateChange::Removed | TemplateChange::Unarchived => {}
        }
        self
    }
}

#[derive(Clone, Debug, Default)]
pub struct TemplateQuery {
    pub status: Option<TemplateStatus>,
    pub category: Option<TemplateCategory>,
    pub limit: usize,
    /// Continue after this template (`name.language`, as `next_cursor` answered it).
    pub after: Option<(String, String)>,
}

/// A page of a catalogue, ordered by name then language.
#[derive(Clone, Debug, Default)]
pub struct TemplatePage {
    pub templates: Vec<CatalogueTemplate>,
    /// The last template of the page, when there are more.
    pub next: Option<(String, String)>,
}

/// When a template change is written: `at` (its `updated_at`), the catalogue's new
/// expiry, and Meta's time of the change when the webhook gave one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeStamp {
    pub at: DateTime<Utc>,
    pub expires_at: Option<i64>,
    pub meta_time: Option<i64>,
}

/// How long before a sync's read a change of Meta's may have happened and still not be in
/// what the sync read (Meta's list lagging its events, and the two clocks apart): a sync
/// stamps each field with its time less this, so a webhook redelivered late with an older
/// change does not undo what the sync wrote, and one that may be newer still applies.
pub const SYNC_STAMP_MARGIN_SECS: i64 = 300;

/// The fields whose changes are ordered by their time (Meta's, or a re-read's): each
/// keeps it beside itself (`{field}_meta_at`), and a sync stamps them all.
pub const TEMPLATE_TIMED_FIELDS: [&str; 4] = ["status", "category", "quality", "body_parameters"];

/// How long a removed template's tombstone refuses a sync's write of it (not
/// configurable): far longer than a sync runs and Meta's list lags its webhooks; the next
/// daily sync reads a list without it.
pub const TEMPLATE_TOMBSTONE_SECS: i64 = 86_400;

impl ChangeStamp {
    /// A change without Meta's time (applied whatever came before).
    pub fn new(at: DateTime<Utc>, expires_at: Option<i64>) -> Self {
        Self {
            at,
            expires_at,
            meta_time: None,
        }
    }
}

#[async_trait]
pub trait TemplateStore: Send + Sync {
    /// Stores (or replaces) a template: a sync's result. Each field's Meta time becomes the
    /// template's `updated_at` less [`SYNC_STAMP_MARGIN_SECS`].
    async fn put_template(&self, template: &CatalogueTemplate) -> Result<(), StoreError>;
    /// [`Self::put_template`] for a sync that began at `since`: only if the stored one
    /// was last written before then (by an older sync or webhook), so that a sync never
    /// overwrites what a later-started sync, or a webhook since, wrote. `false` if kept.
    async fn put_template_unless_newer(
        &self,
        template: &CatalogueTemplate,
        since: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// A live template, if the catalogue has it.
    async fn get_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<CatalogueTemplate>, StoreError>;
    /// Live templates matching the query, after `query.after`, at most `query.limit`.
    async fn list_templates(
        &self,
        waba_id: &str,
        query: &TemplateQuery,
    ) -> Result<TemplatePage, StoreError>;
    /// Applies one of Meta's changes (not `Removed`) to a template only if the catalogue
    /// has it (a conditional write: a webhook never creates a template it knows nothing
    /// else of), refreshing `updated_at` and `expires_at`. With `meta_time` (Meta's time
    /// of the change), only if no change of that field with a later Meta time was applied
    /// since the template was last written by a sync (a redelivered older webhook never
    /// undoes a newer one). `None` if there is none, or it is older.
    async fn update_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
        change: TemplateChange,
        stamp: ChangeStamp,
    ) -> Result<Option<CatalogueTemplate>, StoreError>;
    /// Removes a template; `false` if there was none. With `unchanged_since`, only while
    /// its `updated_at` is still that one (as the caller read it): a template written
    /// since (by another sync, or a webhook) is kept, and answered `false`. Removing one it
    /// has, or (without `unchanged_since`: Meta's removal) one it does not have, leaves a
    /// tombstone for [`TEMPLATE_TOMBSTONE_SECS`], seen by no read, that refuses a later
    /// [`put_template_unless_newer`](Self::put_template_unless_newer) of a list read before
    /// the removal or less than [`SYNC_STAMP_MARGIN_SECS`] after it.
    async fn delete_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;
}
