//! The `TemplateStore` contract, on the memory adapter and on DynamoDB (moto).

use chrono::Duration;
use kirim::domain::{TemplateCategory, TemplateChange, TemplateQuality, TemplateStatus};
use kirim::ports::*;

use super::contract::{aws, contract, memory, Ports};

fn template(p: &Ports, waba: &str, name: &str, language: &str) -> CatalogueTemplate {
    CatalogueTemplate {
        waba_id: waba.into(),
        name: name.into(),
        language: language.into(),
        category: TemplateCategory::Utility,
        status: TemplateStatus::Approved,
        quality: TemplateQuality::Green,
        body_parameters: 1,
        meta_id: Some("900".into()),
        updated_at: p.clock.now(),
        expires_at: Some(p.clock.now().timestamp() + 1000),
    }
}

async fn names(
    p: &Ports,
    waba: &str,
    q: &TemplateQuery,
) -> (Vec<String>, Option<(String, String)>) {
    let page = p.templates.list_templates(waba, q).await.unwrap();
    (
        page.templates
            .iter()
            .map(|t| format!("{}/{}", t.name, t.language))
            .collect(),
        page.next,
    )
}

async fn a_template_is_kept_per_waba_name_and_language_and_replaced_whole(p: Ports) {
    let t = template(&p, "1001", "order_update", "en_US");
    p.templates.put_template(&t).await.unwrap();
    let got = p
        .templates
        .get_template("1001", "order_update", "en_US")
        .await
        .unwrap();
    assert_eq!(got, Some(t.clone()));
    for (waba, name, lang) in [
        ("1002", "order_update", "en_US"),
        ("1001", "order_update", "en"),
        ("1001", "order", "en_US"),
    ] {
        assert_eq!(
            p.templates.get_template(waba, name, lang).await.unwrap(),
            None,
            "{waba} {name} {lang}"
        );
    }
    let replaced = CatalogueTemplate {
        body_parameters: 3,
        category: TemplateCategory::Marketing,
        ..t.clone()
    };
    p.templates.put_template(&replaced).await.unwrap();
    assert_eq!(
        p.templates
            .get_template("1001", "order_update", "en_US")
            .await
            .unwrap(),
        Some(replaced.clone())
    );
    // A delete conditioned on a time it no longer has (written since): kept.
    let stale = replaced.updated_at - chrono::Duration::seconds(1);
    assert!(!p
        .templates
        .delete_template("1001", "order_update", "en_US", Some(stale))
        .await
        .unwrap());
    assert!(p
        .templates
        .get_template("1001", "order_update", "en_US")
        .await
        .unwrap()
        .is_some());
    // As read: removed.
    assert!(p
        .templates
        .delete_template("1001", "order_update", "en_US", Some(replaced.updated_at))
        .await
        .unwrap());
    p.templates.put_template(&replaced).await.unwrap();
    assert!(p
        .templates
        .delete_template("1001", "order_update", "en_US", None)
        .await
        .unwrap());
    assert!(!p
        .templates
        .delete_template("1001", "order_update", "en_US", None)
        .await
        .unwrap());
    assert_eq!(
        p.templates
            .get_template("1001", "order_update", "en_US")
            .await
            .unwrap(),
        None
    );
}

async fn a_catalogue_lists_in_name_then_language_order_filtered_and_paged(p: Ports) {
    for (name, lang, category, status) in [
        (
            "b",
            "en",
            TemplateCategory::Marketing,
            TemplateStatus::Approved,
        ),
        (
            "a_b",
            "en",
            TemplateCategory::Utility,
            TemplateStatus::Paused,
        ),
        (
            "a",
            "en_US",
            TemplateCategory::Marketing,
            TemplateStatus::Approved,
        ),
        (
            "a",
            "en",
            TemplateCategory::Utility,
            TemplateStatus::Approved,
        ),
        (
            "c",
            "ms",
            TemplateCategory::Marketing,
            TemplateStatus::Pending,
        ),
    ] {
        let t = CatalogueTemplate {
            category,
            status,
            ..template(&p, "2001", name, lang)
        };
        p.templates.put_template(&t).await.unwrap();
    }
    p.templates
        .put_template(&template(&p, "2002", "other_waba", "en"))
        .await
        .unwrap();
    let all = TemplateQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        names(&p, "2001", &all).await,
        (
            vec![
                "a/en".into(),
                "a/en_US".into(),
                "a_b/en".into(),
                "b/en".into(),
                "c/ms".into()
            ],
            None
        )
    );
    // Pages of two, each continuing after the last.
    let mut q = TemplateQuery {
        limit: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let (page, next) = names(&p, "2001", &q).await;
        assert!(page.len() <= 2);
        seen.extend(page);
        match next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen, names(&p, "2001", &all).await.0);
    // Filters, also across pages.
    let marketing = TemplateQuery {
        category: Some(TemplateCategory::Marketing),
        limit: 1,
        ..Default::default()
    };
    let (first, next) = names(&p, "2001", &marketing).await;
    assert_eq!(first, vec!["a/en_US".to_owned()]);
    let rest = TemplateQuery {
        after: next,
        limit: 10,
        ..marketing.clone()
    };
    assert_eq!(
        names(&p, "2001", &rest).await,
        (vec!["b/en".into(), "c/ms".into()], None)
    );
    let approved_marketing = TemplateQuery {
        status: Some(TemplateStatus::Approved),
        limit: 10,
        ..marketing
    };
    assert_eq!(
        names(&p, "2001", &approved_marketing).await.0,
        vec!["a/en_US".to_owned(), "b/en".to_owned()]
    );
    assert_eq!(names(&p, "2009", &all).await, (vec![], None));
}

async fn a_change_applies_only_to_a_template_the_catalogue_has(p: Ports) {
    let at = p.clock.now() + Duration::seconds(5);
    let exp = Some(at.timestamp() + 5000);
    let none = p
        .templates
        .update_template(
            "3001",
            "promo_sale",
            "en_US",
            TemplateChange::Status(TemplateStatus::Paused),
            kirim::ports::ChangeStamp::new(at, exp),
        )
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(
        p.templates
            .get_template("3001", "promo_sale", "en_US")
            .await
            .unwrap(),
        None,
        "nothing created"
    );

    let t = template(&p, "3001", "promo_sale", "en_US");
    p.templates.put_template(&t).await.unwrap();
    for change in [
        TemplateChange::Status(TemplateStatus::Paused),
        TemplateChange::Category(TemplateCategory::Marketing),
        TemplateChange::Quality(TemplateQuality::Red),
    ] {
        let got = p
            .templates
            .update_template(
                "3001",
                "promo_sale",
                "en_US",
                change,
                kirim::ports::ChangeStamp::new(at, exp),
            )
            .await
            .unwrap()
            .expect("updated");
        assert_eq!(got.updated_at, at);
        assert_eq!(got.expires_at, exp);
    }
    let now = p
        .templates
        .get_template("3001", "promo_sale", "en_US")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (now.status, now.category, now.quality, now.body_parameters),
        (
            TemplateStatus::Paused,
            TemplateCategory::Marketing,
            TemplateQuality::Red,
            1
        )
    );
}

async fn an_expired_template_is_invisible_and_never_changed(p: Ports) {
    let t = CatalogueTemplate {
        expires_at: Some(p.clock.now().timestamp() + 10),
        ..template(&p, "4001", "old", "en")
    };
    p.templates.put_template(&t).await.unwrap();
    p.clock.advance(Duration::seconds(11));
    assert_eq!(
        p.templates.get_template("4001", "old", "en").await.unwrap(),
        None
    );
    let all = TemplateQuery {
        limit: 100,
        ..Default::default()
    };
    assert!(names(&p, "4001", &all).await.0.is_empty());
    let at = p.clock.now();
    let changed = p
        .templates
        .update_template(
            "4001",
            "old",
            "en",
            TemplateChange::Status(TemplateStatus::Approved),
            kirim::ports::ChangeStamp::new(at, Some(at.timestamp() + 100)),
        )
        .await
        .unwrap();
    assert_eq!(
        changed, None,
        "an expired template is not revived by a webhook"
    );
}

async fn a_webhook_older_than_its_fields_last_change_changes_nothing(p: Ports) {
    p.templates
        .put_template(&template(&p, "5001", "promo_sale", "en_US"))
        .await
        .unwrap();
    let at = p.clock.now();
    let stamp = |meta_time| ChangeStamp {
        at,
        expires_at: Some(at.timestamp() + 5000),
        meta_time: Some(meta_time),
    };
    // Meta's times, from the sync's own.
    let base = at.timestamp();
    let apply = |change, meta_time: i64| {
        let p = &p;
        let meta_time = if meta_time < 1_000_000 {
            base + meta_time
        } else {
            meta_time
        };
        async move {
            p.templates
                .update_template("5001", "promo_sale", "en_US", change, stamp(meta_time))
                .await
                .unwrap()
        }
    };
    // Paused at Meta's time 200, then a redelivered approval of time 100: still paused.
    let paused = TemplateChange::Status(TemplateStatus::Paused);
    assert!(apply(paused, 200).await.is_some());
    let approved = TemplateChange::Status(TemplateStatus::Approved);
    assert_eq!(apply(approved, 100).await, None, "older: refused");
    let now = p
        .templates
        .get_template("5001", "promo_sale", "en_US")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, TemplateStatus::Paused);
    // Another field keeps its own order; the same time again applies.
    let recategorised = TemplateChange::Category(TemplateCategory::Marketing);
    assert!(apply(recategorised, 150).await.is_some());
    assert!(apply(approved, 200).await.is_some());
    // A sync writes the template whole, stamped a little before it read: a late webhook
    // from before that changes nothing; one that may be newer still applies.
    let synced = template(&p, "5001", "promo_sale", "en_US");
    let read_at = synced.updated_at.timestamp();
    p.templates.put_template(&synced).await.unwrap();
    assert_eq!(apply(paused, read_at - 3600).await, None);
    assert!(apply(paused, read_at - 60).await.is_some());
}

async fn a_syncs_put_never_replaces_what_was_written_after_the_sync_began(p: Ports) {
    let began = p.clock.now();
    let mut stale = template(&p, "4001", "order_update", "en_US");
    stale.updated_at = began + Duration::seconds(2);
    // Nothing stored, or stored before the sync began: written.
    assert!(p
        .templates
        .put_template_unless_newer(&stale, began)
        .await
        .unwrap());
    // A webhook's change after the sync began: this sync's older read does not replace it.
    let changed = p
        .templates
        .update_template(
            "4001",
            "order_update",
            "en_US",
            TemplateChange::Status(TemplateStatus::Paused),
            kirim::ports::ChangeStamp::new(began + Duration::seconds(3), stale.expires_at),
        )
        .await
        .unwrap();
    assert!(changed.is_some());
    assert!(!p
        .templates
        .put_template_unless_newer(&stale, began)
        .await
        .unwrap());
    let stored = p
        .templates
        .get_template("4001", "order_update", "en_US")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, TemplateStatus::Paused);
    // A sync that began after it: written.
    let mut later = stale.clone();
    later.updated_at = began + Duration::seconds(5);
    assert!(p
        .templates
        .put_template_unless_newer(&later, began + Duration::seconds(4))
        .await
        .unwrap());
    assert_eq!(
        p.templates
            .get_template("4001", "order_update", "en_US")
            .await
            .unwrap()
            .map(|t| t.status),
        Some(TemplateStatus::Approved)
    );
}

/// A webhook's change applied just before a sync began (Meta's time a moment before the
/// sync read Meta's list, which lags its webhooks) is not undone by the sync's write: the
/// template read `approved` again until the next daily sync, though Meta had paused it. A
/// sync that read the list well after the change (past the margin) writes it.
async fn a_syncs_put_never_undoes_a_webhook_change_made_just_before_it_read(p: Ports) {
    let t0 = p.clock.now();
    let stored = template(&p, "4101", "order_update", "en_US");
    p.templates.put_template(&stored).await.unwrap();
    p.clock.advance(Duration::minutes(5));
    let paused_at = p.clock.now();
    let paused = p
        .templates
        .update_template(
            "4101",
            "order_update",
            "en_US",
            TemplateChange::Status(TemplateStatus::Paused),
            ChangeStamp {
                at: paused_at,
                expires_at: stored.expires_at,
                meta_time: Some(paused_at.timestamp()),
            },
        )
        .await
        .unwrap();
    assert!(paused.is_some(), "{t0}");
    // A sync beginning 2 s later reads Meta's list, still saying approved.
    p.clock.advance(Duration::seconds(2));
    let began = p.clock.now();
    let mut lagging = stored.clone();
    lagging.updated_at = began;
    assert!(!p
        .templates
        .put_template_unless_newer(&lagging, began)
        .await
        .unwrap());
    assert_eq!(status_4101(&p).await, Some(TemplateStatus::Paused));
    // A sync reading Meta's list past the margin: Meta's list is the truth by then.
    p.clock.advance(Duration::seconds(SYNC_STAMP_MARGIN_SECS));
    let began = p.clock.now();
    let mut later = stored.clone();
    later.updated_at = began;
    assert!(p
        .templates
        .put_template_unless_newer(&later, began)
        .await
        .unwrap());
    assert_eq!(status_4101(&p).await, Some(TemplateStatus::Approved));
}

async fn status_4101(p: &Ports) -> Option<TemplateStatus> {
    p.templates
        .get_template("4101", "order_update", "en_US")
        .await
        .unwrap()
        .map(|t| t.status)
}

/// A template Meta deleted does not come back through a sync racing the removal: one that
/// began before it (its page read before), or one that began after but read Meta's list
/// lagging it (within the margin). A removal leaves a tombstone no reader sees, for a day;
/// then Meta's list is the truth again.
async fn a_removed_template_is_not_brought_back_by_a_sync_that_read_metas_list_before_it(p: Ports) {
    let began = p.clock.now();
    let mut t = template(&p, "5001", "promo_sale", "en_US");
    t.expires_at = Some(began.timestamp() + 30 * 86_400);
    p.templates.put_template(&t).await.unwrap();
    // A sync begins; then Meta's DELETED webhook removes the template.
    p.clock.advance(Duration::seconds(10));
    let remove = || {
        p.templates
            .delete_template("5001", "promo_sale", "en_US", None)
    };
    assert!(remove().await.unwrap());
    assert!(!remove().await.unwrap(), "removed once");
    let get = || p.templates.get_template("5001", "promo_sale", "en_US");
    assert_eq!(get().await.unwrap(), None);
    assert_eq!(
        names(&p, "5001", &TemplateQuery::default()).await.0,
        Vec::<String>::new()
    );
    let paused = p
        .templates
        .update_template(
            "5001",
            "promo_sale",
            "en_US",
            TemplateChange::Status(TemplateStatus::Paused),
            kirim::ports::ChangeStamp::new(p.clock.now(), t.expires_at),
        )
        .await
        .unwrap();
    assert_eq!(paused, None, "a webhook never revives it");
    // The sync that began before the removal writes the page it read before it: refused.
    let mut read_before = t.clone();
    read_before.updated_at = began + Duration::seconds(5);
    assert!(!p
        .templates
        .put_template_unless_newer(&read_before, began)
        .await
        .unwrap());
    assert_eq!(get().await.unwrap(), None);
    // A sync that began after it, a minute on, whose read of Meta's list still named it.
    p.clock.advance(Duration::seconds(60));
    let now = p.clock.now();
    let mut lagging = t.clone();
    lagging.updated_at = now;
    assert!(!p
        .templates
        .put_template_unless_newer(&lagging, now - Duration::seconds(1))
        .await
        .unwrap());
    assert_eq!(get().await.unwrap(), None);
    // A day on, the tombstone is gone: what Meta lists is written.
    p.clock.advance(Duration::days(1) + Duration::hours(1));
    let now = p.clock.now();
    let mut listed = t.clone();
    listed.updated_at = now;
    listed.expires_at = Some(now.timestamp() + 30 * 86_400);
    assert!(p
        .templates
        .put_template_unless_newer(&listed, now - Duration::seconds(1))
        .await
        .unwrap());
    assert_eq!(get().await.unwrap(), Some(listed));
}

/// A re-read's body parameter count (after an approval) is a field like Meta's others:
/// stored as a number, ordered by its read's time (an older read, finishing last, changes
/// nothing), and a sync that read Meta's list within the margin after it does not undo it.
async fn a_re_read_body_count_applies_in_read_order_and_holds_off_a_lagging_sync(p: Ports) {
    let stored = template(&p, "4201", "order_update", "en_US");
    p.templates.put_template(&stored).await.unwrap();
    p.clock.advance(Duration::minutes(6));
    let p = &p;
    let count = |n: u32, read: i64| async move {
        let now = p.clock.now();
        p.templates
            .update_template(
                "4201",
                "order_update",
                "en_US",
                TemplateChange::BodyParameters(n),
                ChangeStamp {
                    at: now,
                    expires_at: Some(now.timestamp() + 1000),
                    meta_time: Some(read),
                },
            )
            .await
            .unwrap()
            .map(|t| t.body_parameters)
    };
    let read = p.clock.now().timestamp();
    assert_eq!(count(3, read).await, Some(3));
    assert_eq!(count(2, read - 10).await, None, "an older read: refused");
    let body = || async move {
        p.templates
            .get_template("4201", "order_update", "en_US")
            .await
            .unwrap()
            .map(|t| t.body_parameters)
    };
    assert_eq!(body().await, Some(3));
    // A sync beginning 2 s after the re-read, its list lagging (one parameter): kept.
    p.clock.advance(Duration::seconds(2));
    let began = p.clock.now();
    let mut lagging = stored.clone();
    lagging.updated_at = began;
    assert!(!p
        .templates
        .put_template_unless_newer(&lagging, began)
        .await
        .unwrap());
    assert_eq!(body().await, Some(3));
    // Past the margin, Meta's list is the truth again.
    p.clock.advance(Duration::seconds(SYNC_STAMP_MARGIN_SECS));
    let began = p.clock.now();
    let mut later = stored.clone();
    later.updated_at = began;
    assert!(p
        .templates
        .put_template_unless_newer(&later, began)
        .await
        .unwrap());
    assert_eq!(body().await, Some(1));
}

/// Meta removes a template the catalogue does not have yet (created and approved since
/// the last sync, its approval's re-read still to come): the removal leaves its tombstone
/// all the same, so a write from a list read before it — or within the margin after —
/// does not bring it in; nothing is counted as removed, and a second removal does not
/// move its time.
async fn a_removal_of_a_template_not_in_the_catalogue_still_holds_off_an_older_list(p: Ports) {
    let began = p.clock.now();
    assert!(
        !p.templates
            .delete_template("5101", "welcome_note", "ms", None)
            .await
            .unwrap(),
        "nothing removed"
    );
    let get = || p.templates.get_template("5101", "welcome_note", "ms");
    assert_eq!(get().await.unwrap(), None);
    let listed = template(&p, "5101", "welcome_note", "ms");
    assert!(!p
        .templates
        .put_template_unless_newer(&listed, began)
        .await
        .unwrap());
    p.clock.advance(Duration::seconds(60));
    let mut later = listed.clone();
    later.updated_at = p.clock.now();
    assert!(
        !p.templates
            .put_template_unless_newer(&later, p.clock.now())
            .await
            .unwrap(),
        "a list read a minute after the removal may still name it"
    );
    assert_eq!(get().await.unwrap(), None);
    // A second removal of the absent one changes nothing: its tombstone keeps the first
    // removal's time (a list read more than the margin after the first is admitted).
    assert!(!p
        .templates
        .delete_template("5101", "welcome_note", "ms", None)
        .await
        .unwrap());
    let second = p.clock.now();
    p.clock
        .advance(Duration::seconds(SYNC_STAMP_MARGIN_SECS - 60 + 2));
    let mut past_margin = listed.clone();
    past_margin.updated_at = p.clock.now();
    assert!(p
        .templates
        .put_template_unless_newer(&past_margin, second + Duration::seconds(1))
        .await
        .unwrap());
    assert_eq!(get().await.unwrap(), Some(past_margin));
}

contract!(
    a_removal_of_a_template_not_in_the_catalogue_still_holds_off_an_older_list,
    a_re_read_body_count_applies_in_read_order_and_holds_off_a_lagging_sync,
    a_syncs_put_never_undoes_a_webhook_change_made_just_before_it_read,
    a_removed_template_is_not_brought_back_by_a_sync_that_read_metas_list_before_it,
    a_syncs_put_never_replaces_what_was_written_after_the_sync_began,
    a_webhook_older_than_its_fields_last_change_changes_nothing,
    a_template_is_kept_per_waba_name_and_language_and_replaced_whole,
    a_catalogue_lists_in_name_then_language_order_filtered_and_paged,
    a_change_applies_only_to_a_template_the_catalogue_has,
    an_expired_template_is_invisible_and_never_changed,
);
