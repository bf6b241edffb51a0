//! `TemplateStore` on the one table.
//!
//! A WABA's catalogue is its own partition: `pk = WABA#{waba}`, `sk = TEMPLATE#{name}#{language}`,
//! TTL per the Messages class (refreshed by every sync and change). Listing is a Query of
//! the partition in key (= name, language) order from the cursor's key, with the filters
//! as a FilterExpression, read until the page is full. A webhook's change is an
//! `UpdateItem` conditioned on the template existing and being live, so a webhook never
//! creates a template.
//!
//! A removal (Meta's `DELETED`/`PENDING_DELETION` webhook, or a sync that no longer finds it)
//! leaves a tombstone on the same key for a day ([`REMOVED_AT`], `written_ms`, TTL): no
//! reader sees it, and it refuses a sync's put that began before the removal or read
//! Meta's list less than [`SYNC_STAMP_MARGIN_SECS`] after it (Meta's list lags its
//! webhooks), so a template deleted at Meta does not come back until the next sync.
//!
//! [`SYNC_STAMP_MARGIN_SECS`]: crate::ports::SYNC_STAMP_MARGIN_SECS

use crate::adapters::aws::written;
use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use chrono::{DateTime, Utc};

use super::{classify, from_item, keys, n, s, to_item, DynamoStore, Item, TTL_ATTR};
use crate::domain::TemplateChange;
use crate::ports::{CatalogueTemplate, ChangeStamp, TemplatePage, TemplateQuery, TemplateStore};
use crate::store_error::StoreError;

/// Items read per Query request while filling a page.
const READ_PAGE: i32 = 100;

/// A removed template's tombstone: when it was removed (epoch seconds).
pub(super) const REMOVED_AT: &str = "removed_at_s";

use crate::ports::TEMPLATE_TOMBSTONE_SECS as TOMBSTONE_SECS;

#[async_trait]
impl TemplateStore for DynamoStore {
    async fn put_template(&self, template: &CatalogueTemplate) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(template_item(template)?))
            .send()
            .await
            .map_err(|e| classify("dynamodb put", e))?;
        Ok(())
    }

    async fn put_template_unless_newer(
        &self,
        template: &CatalogueTemplate,
        since: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Not over a removal's tombstone made since the sync began, or within the margin
        // before its read of Meta's list (an expired tombstone is none).
        let read = template.updated_at.timestamp() - crate::ports::SYNC_STAMP_MARGIN_SECS;
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(template_item(template)?))
            // Nor over a webhook's change Meta made less than the margin before the read
            // (its list lags its webhooks): each field's Meta time at most the stamp.
            .condition_expression(
                "(attribute_not_exists(written_ms) OR written_ms < :since) \
                 AND (attribute_not_exists(#removed) OR #removed < :read OR #ttl <= :now) \
                 AND (attribute_not_exists(status_meta_at) OR status_meta_at <= :read) \
                 AND (attribute_not_exists(category_meta_at) OR category_meta_at <= :read) \
                 AND (attribute_not_exists(quality_meta_at) OR quality_meta_at <= :read) \
                 AND (attribute_not_exists(body_parameters_meta_at) \
                 OR body_parameters_meta_at <= :read)",
            )
            .expression_attribute_names("#removed", REMOVED_AT)
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":since", n(since.timestamp_millis()))
            .expression_attribute_values(":read", n(read))
            .expression_attribute_values(":now", n(self.now_secs()))
            .send()
            .await;
        written("dynamodb put", res)
    }

    async fn get_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<CatalogueTemplate>, StoreError> {
        self.get_may_lag(keys::template(waba_id, name, language))
            .await?
            .filter(|item| !item.contains_key(REMOVED_AT))
            .map(from_item)
            .transpose()
    }

    async fn list_templates(
        &self,
        waba_id: &str,
        query: &TemplateQuery,
    ) -> Result<TemplatePage, StoreError> {
        let limit = query.limit.clamp(1, 100);
        let mut filters = vec![
            "(attribute_not_exists(#ttl) OR #ttl > :now)",
            "attribute_not_exists(removed_at_s)",
        ];
        let mut values: HashMap<String, aws_sdk_dynamodb::types::AttributeValue> = HashMap::from([
            (":pk".to_owned(), s(keys::catalogue_pk(waba_id))),
            (":p".to_owned(), s(keys::TEMPLATE_PREFIX)),
            (":now".to_owned(), n(self.now_secs())),
        ]);
        let mut names = HashMap::from([("#ttl".to_owned(), TTL_ATTR.to_owned())]);
        if let Some(st) = query.status {
            filters.push("#status = :status");
            names.insert("#status".into(), "status".into());
            values.insert(":status".into(), s(st.as_str()));
        }
        if let Some(c) = query.category {
            filters.push("#category = :category");
            names.insert("#category".into(), "category".into());
            values.insert(":category".into(), s(c.as_str()));
        }
        let mut start: Option<Item> = query
            .after
            .as_ref()
            .map(|(name, language)| keys::template(waba_id, name, language).attrs());
        // One more than asked: a next cursor only when there is a next page.
        let mut found: Vec<CatalogueTemplate> = Vec::new();
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .filter_expression(filters.join(" AND "))
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .set_exclusive_start_key(start.take())
                .limit(READ_PAGE)
                .send()
                .await
                .map_err(|e| classify("dynamodb query", e))?;
            for item in out.items.unwrap_or_default() {
                found.push(from_item(item)?);
            }
            start = out.last_evaluated_key;
            if found.len() > limit || start.is_none() {
                break;
            }
        }
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|t| (t.name.clone(), t.language.clone()))
        } else {
            None
        };
        Ok(TemplatePage {
            templates: found,
            next,
        })
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
        let (attr, value) = match change {
            TemplateChange::Status(v) => ("status", s(v.as_str())),
            TemplateChange::Category(v) => ("category", s(v.as_str())),
            TemplateChange::Quality(v) => ("quality", s(v.as_str())),
            TemplateChange::BodyParameters(v) => ("body_parameters", n(i64::from(v))),
            TemplateChange::Removed | TemplateChange::Unarchived => {
                return Err(StoreError::Corrupt(
                    "a removal or an unarchive is not an update".into(),
                ))
            }
        };
        let live = "attribute_exists(pk) AND (attribute_not_exists(#ttl) OR #ttl > :now) \
                    AND attribute_not_exists(removed_at_s)";
        // Meta's time of the field's last change, beside it (`status_meta_at`, ...): an
        // older change is refused. A sync's put replaces the item, and with it these.
        let mut set = "SET #f = :v, updated_at = :at, written_ms = :ms".to_owned();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::template(waba_id, name, language).attrs()))
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_names("#f", attr)
            .expression_attribute_values(":now", n(self.now_secs()))
            .expression_attribute_values(":v", value)
            .expression_attribute_values(":at", super::dyn_value(&at)?)
            .expression_attribute_values(":ms", n(at.timestamp_millis()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew);
        req = match meta_time {
            Some(t) => {
                set.push_str(", #mt = :mt");
                req.condition_expression(format!(
                    "{live} AND (attribute_not_exists(#mt) OR #mt <= :mt)"
                ))
                .expression_attribute_names("#mt", format!("{attr}_meta_at"))
                .expression_attribute_values(":mt", n(t))
            }
            None => req.condition_expression(live),
        };
        req = match expires_at {
            Some(t) => req
                .update_expression(format!("{set}, expires_at = :exp, #ttl = :exp"))
                .expression_attribute_values(":exp", n(t)),
            None => req.update_expression(format!("{set} REMOVE expires_at, #ttl")),
        };
        match req.send().await {
            Ok(out) => out.attributes.map(from_item).transpose(),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(None)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn delete_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        // A tombstone in its place (module docs), only over a live template.
        let now = self.now_secs();
        let exp = now.saturating_add(TOMBSTONE_SECS);
        let Some(at) = unchanged_since else {
            // Meta's removal: the tombstone wherever no live one is — over a live template
            // (answered `true`), and also where the catalogue has none (yet: created since
            // the last sync), so that a write from a list read before the removal (an
            // approval's re-read, a sync) does not bring it in. One write: a sync's put
            // cannot land between a look and the tombstone.
            let key = keys::template(waba_id, name, language);
            let mut item = key.attrs();
            item.insert(REMOVED_AT.into(), n(now));
            item.insert("written_ms".into(), n(now.saturating_mul(1000)));
            item.insert("expires_at".into(), n(exp));
            item.insert(TTL_ATTR.into(), n(exp));
            let res = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#removed) OR #ttl <= :now")
                .expression_attribute_names("#removed", REMOVED_AT)
                .expression_attribute_names("#ttl", TTL_ATTR)
                .expression_attribute_values(":now", n(now))
                .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
                .send()
                .await;
            return match res {
                // A live template was there (not one past its TTL).
                Ok(out) => Ok(out.attributes.is_some_and(|old| {
                    old.contains_key(keys::PK)
                        && old
                            .get(TTL_ATTR)
                            .and_then(|v| v.as_n().ok())
                            .and_then(|t| t.parse::<i64>().ok())
                            .is_none_or(|t| t > now)
                })),
                // A live tombstone: removed already.
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() =>
                {
                    Ok(false)
                }
                Err(e) => Err(classify("dynamodb put", e)),
            };
        };
        let live = "attribute_exists(pk) AND attribute_not_exists(#removed) \
                    AND (attribute_not_exists(#ttl) OR #ttl > :now)";
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::template(waba_id, name, language).attrs()))
            .update_expression(
                "SET #removed = :now, written_ms = :ms, expires_at = :exp, #ttl = :exp",
            )
            .expression_attribute_names("#removed", REMOVED_AT)
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ms", n(now.saturating_mul(1000)))
            .expression_attribute_values(":exp", n(exp))
            .condition_expression(format!("{live} AND updated_at = :seen"))
            .expression_attribute_values(":seen", super::dyn_value(&at)?);
        written("dynamodb update", req.send().await)
    }
}

/// A catalogue template's item: with Meta's times of its fields as the sync's read time
/// (less a margin), and `written_ms` (when it was written, epoch ms: what a later sync's
/// conditional put compares).
fn template_item(template: &CatalogueTemplate) -> Result<Item, StoreError> {
    let key = keys::template(&template.waba_id, &template.name, &template.language);
    let mut item = to_item(template, &key.pairs(), template.expires_at)?;
    let stamp = template.updated_at.timestamp() - crate::ports::SYNC_STAMP_MARGIN_SECS;
    for field in crate::ports::TEMPLATE_TIMED_FIELDS {
        item.insert(format!("{field}_meta_at"), n(stamp));
    }
    item.insert(
        "written_ms".into(),
        n(template.updated_at.timestamp_millis()),
    );
    Ok(item)
}
