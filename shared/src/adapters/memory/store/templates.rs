//! `TemplateStore` on the memory store: the same rules as DynamoDB, under the one lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::MemoryStore;
use crate::domain::TemplateChange;
use crate::ports::{CatalogueTemplate, TemplatePage, TemplateQuery, TemplateStore};
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
        s.templates.insert(
            key(&template.waba_id, &template.name, &template.language),
            template.clone(),
        );
        Ok(())
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
        at: DateTime<Utc>,
        expires_at: Option<i64>,
    ) -> Result<Option<CatalogueTemplate>, StoreError> {
        let mut s = self.lock()?;
        let Some(t) = s
            .templates
            .get_mut(&key(waba_id, name, language))
            .filter(|t| self.live(t.expires_at))
        else {
            return Ok(None);
        };
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
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        Ok(s.templates
            .remove(&key(waba_id, name, language))
            .is_some_and(|t| self.live(t.expires_at)))
    }
}
