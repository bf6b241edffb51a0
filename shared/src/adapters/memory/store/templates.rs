//! `TemplateStore` on the memory store: the same rules as DynamoDB, under the one lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::MemoryStore;
use crate::domain::TemplateChange;
use crate::ports::{CatalogueTemplate, ChangeStamp, TemplatePage, TemplateQuery, TemplateStore};
use crate::store_error::StoreError;

fn key(waba_id: &str, name: &str, language: &str) -> (String, String, String) {
    (waba_id.to_owned(), name.to_owned(), language.to_owned())
}

/// Whether a template matches a query's filters.
pub(crate) fn matches(t: &CatalogueTemplate, q: &TemplateQuery) -> bool {
    q.status.is_none_or(|s| s == t.status) && q.category.is_none_or(|c| c == t.category)
}

#[async_trait]
impl TemplateStore for MemoryStore {
    async fn put_template(&self, template: &CatalogueTemplate) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        insert_template(&mut s, template);
        Ok(())
    }

    async fn put_template_unless_newer(
        &self,
        template: &CatalogueTemplate,
        since: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let at = key(&template.waba_id, &template.name, &template.language);
        if s.templates.get(&at).is_some_and(|t| t.updated_at >= since) {
            return Ok(false);
        }
        // A live tombstone of a removal since the sync began, or within the margin before
        // its read of Meta's list, refuses it (as on DynamoDB); so does a webhook's change
        // of a field that Meta made within the margin before the read.
        let read = template.updated_at.timestamp() - crate::ports::SYNC_STAMP_MARGIN_SECS;
        if s.templates.contains_key(&at)
            && s.template_meta_at
                .get(&at)
                .is_some_and(|times| times.values().any(|t| *t > read))
        {
            return Ok(false);
        }
        let now = self.clock.now().timestamp();
        if let Some((removed, expires)) = s.template_removed.get(&at) {
            if *expires > now
                && (*removed >= read || removed.saturating_mul(1000) >= since.timestamp_millis())
            {
                return Ok(false);
            }
        }
        insert_template(&mut s, template);
        Ok(true)
    }

    async fn get_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<CatalogueTemplate>, StoreError> {
        let s = self.lock()?;
        Ok(s.templates
            .get(&key(waba_id, name, language))
            .filter(|t| self.live(t.expires_at))
            .cloned())
    }

    async fn list_templates(
        &self,
        waba_id: &str,
        query: &TemplateQuery,
    ) -> Result<TemplatePage, StoreError> {
        let limit = query.limit.clamp(1, 100);
        let s = self.lock()?;
        let mut matching =
            s.templates
                .range(key(waba_id, "", "")..)
                .take_while(|((w, _, _), _)| w == waba_id)
                .filter(|((_, n, l), _)| {
                    query.after.as_ref().is_none_or(|(an, al)| {
                        (n.as_str(), l.as_str()) > (an.as_str(), al.as_str())
                    })
                })
                .map(|(_, t)| t)
                .filter(|t| self.live(t.expires_at) && matches(t, query));
        let templates: Vec<CatalogueTemplate> = matching.by_ref().take(limit).cloned().collect();
        let next = if matching.next().is_some() {
            templates
                .last()
                .map(|t| (t.name.clone(), t.language.clone()))
        } else {
            None
        };
        Ok(TemplatePage { templates, next })
    }

    async fn update_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
        change: TemplateChange,
        stamp: ChangeStamp,
    ) -> Result<Option<CatalogueTemplate>, StoreError> {
        let ChangeStamp {
            at,
            expires_at,
            meta_time,
        } = stamp;
        let mut s = self.lock()?;
        let at_key = key(waba_id, name, language);
        let field = match change {
            TemplateChange::Status(_) => "status",
            TemplateChange::Category(_) => "category",
            TemplateChange::Quality(_) => "quality",
            TemplateChange::BodyParameters(_) => "body_parameters",
            TemplateChange::Removed | TemplateChange::Unarchived => {
                return Err(StoreError::Corrupt(
                    "a removal or an unarchive is not an update".into(),
                ))
            }
        };
        let state = &mut *s;
        let Some(t) = state
            .templates
            .get_mut(&at_key)
            .filter(|t| self.live(t.expires_at))
        else {
            return Ok(None);
        };
        // Meta's time of the field's last change, as DynamoDB keeps it beside the field.
        let times = state.template_meta_at.entry(at_key).or_default();
        if let Some(t) = meta_time {
            if times.get(field).is_some_and(|last| *last > t) {
                return Ok(None);
            }
            times.insert(field, t);
        }
        let updated = CatalogueTemplate {
            updated_at: at,
            expires_at,
            ..t.clone().with(change)
        };
        *t = updated.clone();
        Ok(Some(updated))
    }

    async fn delete_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let at = key(waba_id, name, language);
        if let Some(seen) = unchanged_since {
            if s.templates.get(&at).is_some_and(|t| t.updated_at != seen) {
                return Ok(false);
            }
        }
        let now = self.clock.now().timestamp();
        let tombstone = (
            now,
            now.saturating_add(crate::ports::TEMPLATE_TOMBSTONE_SECS),
        );
        let live = s
            .templates
            .get(&at)
            .is_some_and(|t| self.live(t.expires_at));
        if !live {
            // Meta removed one the catalogue does not have (yet): its tombstone all the
            // same, where no live one is (as on DynamoDB). Not counted.
            if unchanged_since.is_none()
                && s.template_removed
                    .get(&at)
                    .is_none_or(|(_, expires)| *expires <= now)
            {
                s.templates.remove(&at);
                s.template_meta_at.remove(&at);
                s.template_removed.insert(at, tombstone);
            }
            return Ok(false);
        }
        s.template_meta_at.remove(&at);
        s.templates.remove(&at);
        // Its tombstone, as on DynamoDB (`adapters::aws::dynamodb::templates`).
        s.template_removed.insert(at, tombstone);
        Ok(true)
    }
}

/// Stores a template as a sync does: each field's Meta time as its `updated_at` less the
/// margin.
fn insert_template(s: &mut super::State, template: &CatalogueTemplate) {
    let at = key(&template.waba_id, &template.name, &template.language);
    let stamp = template.updated_at.timestamp() - crate::ports::SYNC_STAMP_MARGIN_SECS;
    s.template_meta_at.insert(
        at.clone(),
        crate::ports::TEMPLATE_TIMED_FIELDS
            .into_iter()
            .map(|f| (f, stamp))
            .collect(),
    );
    s.template_removed.remove(&at);
    s.templates.insert(at, template.clone());
}
