//! The contract every adapter pair passes: memory and AWS (moto), same assertions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kirim::adapters::aws::{DynamoStore, SecretsManagerStore, SqsQueue};
use kirim::adapters::memory::{MemoryQueue, MemorySecrets, MemoryStore};
use kirim::config::Settings;
use kirim::domain::{
    MessageError, MessageId, MessageRecord, MessageStatus, PhoneNumber, Role, StatusEvent, TenantId,
};
use kirim::ports::*;
use kirim::secret::Secret;
use kirim::service::{Backends, Deps, Stores};
use kirim::store_error::StoreError;
use kirim::wiring::{NotWired, Port};
use kirim_tests::{moto_sdk, unique_stack, ManualClock};

/// Every port, built by the one constructor (`Deps::new`) and read through it: `p.tenants`,
/// `p.queue`, `p.secrets.store()` (the secret store itself, under the cache) ...
pub(crate) struct Ports {
    deps: Deps,
    /// The same clock as `deps.clock`, as the manual clock tests move.
    pub(crate) clock: Arc<ManualClock>,
}

impl std::ops::Deref for Ports {
    type Target = Deps;
    fn deref(&self) -> &Deps {
        &self.deps
    }
}

/// The contract is about the store, the dispatch queue and the secret store: the other
/// ports are not wired.
fn ports<S: Stores>(
    store: Arc<S>,
    queue: Arc<dyn DispatchQueue>,
    secrets: Arc<dyn SecretStore>,
    clock: Arc<ManualClock>,
) -> Ports {
    let deps = Deps::new(Backends {
        store,
        queue,
        callback_queue: Arc::new(NotWired::new("the contract tests", Port::CallbackQueue)),
        secrets,
        data_keys: Arc::new(NotWired::new("the contract tests", Port::DataKeys)),
        meta: Arc::new(NotWired::new("the contract tests", Port::Meta)),
        clock: clock.clone(),
        settings: Settings::default(),
        secret_ttl: Duration::ZERO,
        read_cache_ttl: Duration::ZERO,
    });
    Ports { deps, clock }
}

pub(crate) fn memory() -> Ports {
    memory_and_store().0
}

/// [`memory`], and its store: for a test that puts in it what no adapter would write.
pub(crate) fn memory_and_store() -> (Ports, Arc<MemoryStore>) {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let ports = ports(
        store.clone(),
        Arc::new(MemoryQueue::new(Duration::from_secs(360), 10)),
        Arc::new(MemorySecrets::default()),
        clock,
    );
    (ports, store)
}

pub(crate) async fn aws() -> Ports {
    aws_and_table().await.0
}

/// [`aws`], and its table's client and name: for a test that writes an item as no adapter
/// would.
pub(crate) async fn aws_and_table() -> (Ports, aws_sdk_dynamodb::Client, String) {
    aws_on(&moto_sdk().await).await
}

/// [`aws_and_table`] on the emulator `sdk` points at, with its credentials.
pub(crate) async fn aws_on(
    sdk: &aws_config::SdkConfig,
) -> (Ports, aws_sdk_dynamodb::Client, String) {
    let stack = kirim_infra::bootstrap::ensure_stack(sdk, &unique_stack())
        .await
        .expect("stack in moto");
    let clock = ManualClock::new();
    let table = aws_sdk_dynamodb::Client::new(sdk);
    let ports = ports(
        Arc::new(DynamoStore::new(
            table.clone(),
            stack.table.clone(),
            clock.clone(),
        )),
        Arc::new(SqsQueue::new(
            aws_sdk_sqs::Client::new(sdk),
            stack.queue_url("DispatchQueue").unwrap_or_default(),
            stack.queue_url("DispatchDeadLetterQueue"),
        )),
        Arc::new(SecretsManagerStore::new(
            aws_sdk_secretsmanager::Client::new(sdk),
        )),
        clock,
    );
    (ports, table, stack.table)
}

pub(crate) fn tenant(credits: i64) -> Tenant {
    let id = TenantId::generate();
    Tenant {
        phone_number_id: format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000),
        id,
        name: "Kedai".into(),
        waba_id: "1".into(),
        status: TenantStatus::Active,
        credits,
        meta_token_secret: "s".into(),
        created_at: Utc::now(),
        ip_allowlist: Vec::new(),
        status_reason: None,
        status_changed_at: None,
        throughput_per_sec: None,
        request_limits: None,
        meta_token_changed_at: None,
    }
}

pub(crate) fn key_for(t: &Tenant) -> ApiKeyRecord {
    ApiKeyRecord {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        name: "k".into(),
        role: Role::Admin,
        key_hash: kirim::secret::token_hash(&kirim::domain::new_id()),
        created_at: Utc::now(),
        expires_at: None,
        revoked: false,
        revoked_at: None,
        replaced_by: None,
        // Stored and read back with the rest (a map on DynamoDB).
        created_by: Some(kirim::ports::KeyCreator {
            kind: "user".into(),
            id: "01JUSERXXXXXXXXXXXXXXXXXXX".into(),
            email: Some("siti@kedai.example".into()),
        }),
    }
}

pub(crate) fn message(
    p: &Ports,
    t: &TenantId,
    expires_in_secs: i64,
) -> (MessageRecord, LedgerEntry) {
    message_expiring(t, p.clock.now(), expires_in_secs)
}

/// An accepted message of `t` at `now` and its debit (an hour to live).
pub(crate) fn message_for(
    t: &TenantId,
    now: chrono::DateTime<Utc>,
) -> (MessageRecord, LedgerEntry) {
    message_expiring(t, now, 3600)
}

pub(crate) fn message_expiring(
    t: &TenantId,
    now: chrono::DateTime<Utc>,
    expires_in_secs: i64,
) -> (MessageRecord, LedgerEntry) {
    let id = MessageId::from_trusted(ulid::Ulid::from_datetime(now.into()).to_string());
    let rec = MessageRecord {
        id: id.clone(),
        tenant_id: t.clone(),
        to: PhoneNumber::parse("+60123456789").unwrap(),
        template: None,
        status: MessageStatus::Accepted,
        error: None,
        events: vec![StatusEvent {
            status: MessageStatus::Accepted,
            at: now,
        }],
        wamid: None,
        attempts: 0,
        price: 1,
        client_reference: None,
        created_at: now,
        updated_at: now,
        expires_at: Some(now.timestamp() + expires_in_secs),
        broadcast_id: None,
        send_at: None,
        from: None,
        pricing: None,
        carried_slot: None,
        claim: None,
        quality_counted: false,
        refunded: false,
        settled_at: None,
    };
    let debit = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        amount: -1,
        kind: LedgerKind::Debit,
        reference: None,
        message_id: Some(id),
        at: now,
        expires_at: Some(now.timestamp() + 3600),
    };
    (rec, debit)
}

/// One whole pass of the retention sweep (page by page, as the retention run reads the
/// table), its counts summed.
pub(crate) async fn sweep(p: &Ports) -> SweepPage {
    let now = p.clock.now();
    let mut total = SweepPage::default();
    let mut start: Option<String> = None;
    for _ in 0..1000 {
        let page = p
            .retention
            .sweep_page(now, start.as_deref(), 2)
            .await
            .unwrap();
        for (k, v) in page.deleted {
            *total.deleted.entry(k).or_default() += v;
        }
        total.examined += page.examined;
        total.closed_tenants.extend(page.closed_tenants);
        total.active_tenants.extend(page.active_tenants);
        total.suspended_tenants.extend(page.suspended_tenants);
        start = page.next;
        if start.is_none() {
            break;
        }
    }
    total
}

pub(crate) async fn onboarded(p: &Ports, credits: i64) -> Tenant {
    let t = tenant(credits);
    p.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    t
}

async fn a_tenant_is_found_by_id_phone_number_and_key_hash(p: Ports) {
    let t = tenant(0);
    let key = key_for(&t);
    p.tenants.create_tenant(&t, &key, None).await.unwrap();
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().as_ref(),
        Some(&t)
    );
    assert_eq!(
        p.tenants
            .tenant_by_phone_number_id(&t.phone_number_id)
            .await
            .unwrap(),
        Some(t.id.clone())
    );
    assert_eq!(
        p.tenants.api_key_by_hash(&key.key_hash).await.unwrap(),
        Some(key)
    );
    assert_eq!(p.tenants.api_key_by_hash("nope").await.unwrap(), None);
}

async fn metas_suspension_applies_only_to_an_active_tenant_unchanged_since_it_was_read(p: Ports) {
    let t = tenant(0);
    p.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let seen = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(seen.status_changed_at, None);
    let now = p.clock.now();
    // The operator suspends and resumes it meanwhile: Meta's word on the tenant as it was
    // before changes nothing.
    p.tenants
        .set_status(&t.id, TenantStatus::Suspended, Some("checking"), now)
        .await
        .unwrap();
    let resumed = p
        .tenants
        .set_status(
            &t.id,
            TenantStatus::Active,
            Some("fixed"),
            now + chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    let later = now + chrono::Duration::seconds(2);
    assert_eq!(
        p.tenants
            .suspend_if_unchanged(&t.id, "meta error 190", later, seen.status_changed_at)
            .await
            .unwrap(),
        None
    );
    let after = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(
        (after.status, after.status_reason.as_deref()),
        (TenantStatus::Active, Some("fixed"))
    );
    // As it is now: suspended, once.
    let suspended = p
        .tenants
        .suspend_if_unchanged(&t.id, "meta error 190", later, resumed.status_changed_at)
        .await
        .unwrap()
        .expect("suspended");
    assert_eq!(suspended.status, TenantStatus::Suspended);
    assert_eq!(suspended.status_reason.as_deref(), Some("meta error 190"));
    assert_eq!(suspended.status_changed_at, Some(later));
    assert_eq!(
        p.tenants
            .suspend_if_unchanged(&t.id, "again", later, resumed.status_changed_at)
            .await
            .unwrap(),
        None,
        "suspended already: left"
    );
    // Never changed, as read: suspended; an unknown tenant: nothing.
    let fresh = tenant(0);
    p.tenants
        .create_tenant(&fresh, &key_for(&fresh), None)
        .await
        .unwrap();
    assert!(p
        .tenants
        .suspend_if_unchanged(&fresh.id, "meta", later, None)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        p.tenants
            .suspend_if_unchanged(&tenant(0).id, "meta", later, None)
            .await
            .unwrap(),
        None
    );
}

/// A suspension's reason built from Meta's error, kept as a build before stop 60 kept it
/// (its title quoting the recipient and a long number): the answer and every read of the
/// tenant get it scrubbed by the digit rule; an operator's reason reads back as written.
async fn a_suspension_reason_from_meta_kept_unscrubbed_is_read_back_scrubbed(p: Ports) {
    let t = onboarded(&p, 0).await;
    let now = p.clock.now();
    let raw = "meta error 131031: (#131031) Account locked for +60123456789, ref 123456789";
    let scrubbed = "meta error 131031: (#131031) Account locked for <redacted>, ref <redacted>";
    let suspended = p
        .tenants
        .suspend_if_unchanged(&t.id, raw, now, None)
        .await
        .unwrap()
        .expect("suspended");
    assert_eq!(suspended.status_reason.as_deref(), Some(scrubbed));
    let got = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(got.status_reason.as_deref(), Some(scrubbed));
    let operators = "paid 2025-01-15, invoice 20250115 0042";
    let resumed = p
        .tenants
        .set_status(
            &t.id,
            TenantStatus::Active,
            Some(operators),
            now + chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    assert_eq!(resumed.status_reason.as_deref(), Some(operators));
    let got = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(got.status_reason.as_deref(), Some(operators));
}

/// A status write answers as applied only the write it made itself: the same change made
/// again, even at the same time with the same reason (which a read-back after a refused
/// condition could not tell from its own lost answer), is a repeat, as the first left it:
/// Meta's suspension answers "not suspended", a close answers that the tenant is closed.
async fn a_status_change_made_again_at_the_same_time_with_the_same_reason_is_a_repeat(p: Ports) {
    let t = onboarded(&p, 0).await;
    let now = p.clock.now();
    assert!(p
        .tenants
        .suspend_if_unchanged(&t.id, "meta error 190", now, None)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        p.tenants
            .suspend_if_unchanged(&t.id, "meta error 190", now, None)
            .await
            .unwrap(),
        None
    );
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    assert_eq!(
        p.tenants
            .set_status(&t.id, TenantStatus::Closed, Some("bye"), now)
            .await
            .unwrap_err(),
        StoreError::Conflict("the tenant is closed".into())
    );
}

async fn a_phone_number_id_onboarded_twice_is_a_conflict_that_writes_nothing(p: Ports) {
    let first = onboarded(&p, 0).await;
    let mut second = tenant(5);
    second.phone_number_id = first.phone_number_id.clone();
    let key = key_for(&second);
    let err = p
        .tenants
        .create_tenant(&second, &key, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(p.tenants.get_tenant(&second.id).await.unwrap(), None);
    assert_eq!(
        p.tenants.api_key_by_hash(&key.key_hash).await.unwrap(),
        None
    );
}

async fn a_debit_records_the_message_and_the_ledger_entry_together(p: Ports) {
    let t = onboarded(&p, 0).await;
    let (m, d) = message(&p, &t.id, 3600);
    assert_eq!(
        p.messages.insert_with_debit(&m, &d).await.unwrap_err(),
        StoreError::InsufficientCredits
    );
    assert_eq!(p.messages.get_message(&t.id, &m.id).await.unwrap(), None);
    assert!(p.ledger.entries(&t.id).await.unwrap().is_empty());
    let top = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        amount: 2,
        kind: LedgerKind::TopUp,
        reference: Some("inv-1".into()),
        message_id: None,
        at: Utc::now(),
        expires_at: None,
    };
    assert_eq!(p.ledger.top_up(&top).await.unwrap(), 2);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    assert_eq!(p.messages.get_message(&t.id, &m.id).await.unwrap(), Some(m));
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits,
        1
    );
    let kinds: Vec<LedgerKind> = p
        .ledger
        .entries(&t.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds.len(), 2);
    assert!(kinds.contains(&LedgerKind::TopUp) && kinds.contains(&LedgerKind::Debit));
}

/// A failure's title kept as a build before stop 60 kept it (Meta's words quoting the
/// recipient and a long number): whatever reads the message gets it scrubbed with the
/// message's own number and the digit rule, Meta's code and words kept; a title that was
/// scrubbed already reads back as it is.
async fn a_failure_title_kept_unscrubbed_is_read_back_scrubbed_by_every_read(p: Ports) {
    let t = onboarded(&p, 10).await;
    let raw =
        "(#131009) Parameter value is not valid: +60123456789 for 60123456789, order 123456789";
    let scrubbed =
        "(#131009) Parameter value is not valid: <redacted> for <redacted>, order <redacted>";
    let error = |title: &str| MessageError {
        code: 131009.into(),
        title: title.into(),
    };
    let title_of = |m: &MessageRecord| m.error.as_ref().map(|e| e.title.clone());
    // Stored failed, whole.
    let (mut m, d) = message(&p, &t.id, 3600);
    m.status = MessageStatus::Failed;
    m.error = Some(error(raw));
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    let got = p.messages.get_message(&t.id, &m.id).await.unwrap().unwrap();
    assert_eq!(title_of(&got).as_deref(), Some(scrubbed));
    let peeked = p
        .messages
        .peek_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(title_of(&peeked).as_deref(), Some(scrubbed));
    let page = p
        .messages
        .list_messages(
            &t.id,
            &MessageQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(title_of(&page.messages[0]).as_deref(), Some(scrubbed));
    // Moved to failed with the title as Meta's status carried it then.
    p.clock.advance(chrono::Duration::milliseconds(5));
    let (other, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&other, &d).await.unwrap();
    let change = StatusChange {
        error: Some(error(raw)),
        ..Default::default()
    };
    let Transition::Applied(moved) = p
        .messages
        .transition(
            &t.id,
            &other.id,
            MessageStatus::Failed,
            &change,
            p.clock.now(),
        )
        .await
        .unwrap()
    else {
        panic!("accepted moves to failed");
    };
    assert_eq!(title_of(&moved).as_deref(), Some(scrubbed));
    let got = p
        .messages
        .get_message(&t.id, &other.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(title_of(&got).as_deref(), Some(scrubbed));
    assert_eq!(
        got.to, other.to,
        "the number itself is kept where it belongs"
    );
    // Scrubbed when written (from stop 60 on): read back unchanged.
    p.clock.advance(chrono::Duration::milliseconds(5));
    let (mut fresh, d) = message(&p, &t.id, 3600);
    fresh.status = MessageStatus::Failed;
    fresh.error = Some(error(scrubbed));
    p.messages.insert_with_debit(&fresh, &d).await.unwrap();
    assert_eq!(
        p.messages.get_message(&t.id, &fresh.id).await.unwrap(),
        Some(fresh)
    );
}

/// A warm process's copy of a tenant (5 s) may not know it was closed: the debit itself
/// refuses a closed tenant, a message's, an idempotent one's and a campaign's, with the
/// balance untouched, no ledger entry and nothing stored.
async fn a_debit_of_a_closed_tenant_is_refused_as_closed_and_writes_nothing(p: Ports) {
    let t = onboarded(&p, 100).await;
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), p.clock.now())
        .await
        .unwrap();
    let closed = StoreError::Conflict(kirim::ports::TENANT_CLOSED.into());
    let (m, d) = message(&p, &t.id, 3600);
    assert_eq!(
        p.messages.insert_with_debit(&m, &d).await.unwrap_err(),
        closed
    );
    let (m2, d2) = message(&p, &t.id, 3600);
    let now = p.clock.now();
    let key = IdempotencyRecord {
        tenant_id: t.id.clone(),
        key_hash: kirim::domain::IdempotencyKey::parse("after-close")
            .unwrap()
            .hash(),
        fingerprint: "fp".into(),
        message_id: m2.id.clone(),
        created_at: now,
        expires_at: Some(now.timestamp() + 86_400),
    };
    assert_eq!(
        p.idempotency
            .insert_with_debit_once(&m2, &d2, &key)
            .await
            .unwrap_err(),
        closed
    );
    let b = crate::contract_broadcasts::running_broadcast(&t.id, now);
    let (_, mut d3) = message(&p, &t.id, 3600);
    d3.amount = -2;
    d3.message_id = None;
    let phones = [
        PhoneNumber::parse("+60123456789").unwrap(),
        PhoneNumber::parse("+60123456780").unwrap(),
    ];
    assert_eq!(
        p.broadcasts
            .create_broadcast(&b, &phones, &d3)
            .await
            .unwrap_err(),
        closed
    );
    assert_eq!(p.messages.get_message(&t.id, &m.id).await.unwrap(), None);
    assert_eq!(p.messages.get_message(&t.id, &m2.id).await.unwrap(), None);
    assert_eq!(
        p.idempotency
            .get_idempotency(&t.id, &key.key_hash)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        p.broadcasts.get_broadcast(&t.id, &b.id).await.unwrap(),
        None
    );
    assert!(p.ledger.entries(&t.id).await.unwrap().is_empty());
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits,
        100
    );
}

async fn a_top_up_for_an_unknown_tenant_is_not_found(p: Ports) {
    let top = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: TenantId::generate(),
        amount: 2,
        kind: LedgerKind::TopUp,
        reference: None,
        message_id: None,
        at: Utc::now(),
        expires_at: None,
    };
    assert_eq!(
        p.ledger.top_up(&top).await.unwrap_err(),
        StoreError::NotFound
    );
}

async fn a_closed_tenant_takes_no_top_up_or_setting_but_its_refunds(p: Ports) {
    let t = tenant(5);
    p.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), p.clock.now())
        .await
        .unwrap();
    let entry = |kind: LedgerKind| LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        amount: 2,
        kind,
        reference: None,
        message_id: None,
        at: Utc::now(),
        expires_at: None,
    };
    assert!(matches!(
        p.ledger.top_up(&entry(LedgerKind::TopUp)).await,
        Err(StoreError::Conflict(_))
    ));
    let (keyed, record) = keyed_top_up(&p, &t.id, 3, "INV-closed");
    assert!(matches!(
        p.ledger.top_up_once(&keyed, &record).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        p.tenants
            .set_ip_allowlist(&t.id, &["203.0.113.0/24".into()])
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        p.tenants
            .set_request_limits(
                &t.id,
                kirim::domain::RequestLimits {
                    requests_per_sec: 10,
                    burst: 20
                }
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        p.throughput.set_throughput(&t.id, 1000).await,
        Err(StoreError::Conflict(_))
    ));
    let after = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(after.credits, 5, "nothing credited");
    assert!(after.ip_allowlist.is_empty() && after.request_limits.is_none());
    assert_eq!(after.throughput_per_sec, None, "no tier set");
    assert!(
        p.ledger.entries(&t.id).await.unwrap().is_empty(),
        "no entry"
    );
    // A refund of what was debited goes back, closed or not.
    assert_eq!(
        p.ledger.refund(&entry(LedgerKind::Refund)).await.unwrap(),
        7
    );
}

fn keyed_top_up(
    p: &Ports,
    t: &TenantId,
    amount: i64,
    key: &str,
) -> (LedgerEntry, RequestKeyRecord) {
    let now = p.clock.now();
    let entry = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        amount,
        kind: LedgerKind::TopUp,
        reference: Some("INV-7".into()),
        message_id: None,
        at: now,
        expires_at: None,
    };
    let record = RequestKeyRecord {
        tenant_id: t.clone(),
        key_hash: kirim::secret::token_hash(key),
        fingerprint: format!("body-{amount}"),
        first_id: entry.id.clone(),
        created_at: now,
        expires_at: Some(now.timestamp() + 86_400),
    };
    (entry, record)
}

async fn concurrent_top_ups_with_one_key_credit_once_and_the_others_see_the_first(p: Ports) {
    let t = onboarded(&p, 0).await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let (entry, key) = keyed_top_up(&p, &t.id, 40, "inv-7-retry");
            let ledger = p.ledger.clone();
            tokio::spawn(async move { (ledger.top_up_once(&entry, &key).await, entry.id) })
        })
        .collect();
    let (mut applied, mut earlier) = (Vec::new(), Vec::new());
    for a in attempts {
        match a.await.unwrap() {
            (Ok(TopUpOnce::Applied(balance)), id) => applied.push((balance, id)),
            (Ok(TopUpOnce::Earlier(record)), _) => earlier.push(record.first_id),
            (Err(e), _) => panic!("{e:?}"),
        }
    }
    assert_eq!(applied.len(), 1, "exactly one credits");
    let (balance, first) = applied.remove(0);
    assert_eq!(balance, 40);
    assert!(earlier.iter().all(|id| *id == first), "{earlier:?}");
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits,
        40
    );
    let entries = p.ledger.entries(&t.id).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![first]
    );
    // Another key credits again; the first key, once expired, may be used afresh.
    let (entry, key) = keyed_top_up(&p, &t.id, 2, "inv-8");
    assert_eq!(
        p.ledger.top_up_once(&entry, &key).await.unwrap(),
        TopUpOnce::Applied(42)
    );
    p.clock.advance(chrono::Duration::seconds(86_401));
    let (entry, key) = keyed_top_up(&p, &t.id, 1, "inv-7-retry");
    assert_eq!(
        p.ledger.top_up_once(&entry, &key).await.unwrap(),
        TopUpOnce::Applied(43)
    );
}

async fn a_keyed_top_up_for_an_unknown_tenant_keeps_no_key(p: Ports) {
    let nobody = TenantId::generate();
    let (entry, key) = keyed_top_up(&p, &nobody, 5, "inv-9");
    assert_eq!(
        p.ledger.top_up_once(&entry, &key).await.unwrap_err(),
        StoreError::NotFound
    );
    // Nothing was kept: the same key is not answered as an earlier request.
    assert_eq!(
        p.ledger.top_up_once(&entry, &key).await.unwrap_err(),
        StoreError::NotFound
    );
}

async fn concurrent_debits_never_take_the_balance_below_zero(p: Ports) {
    let t = onboarded(&p, 0).await;
    let top = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        amount: 7,
        kind: LedgerKind::TopUp,
        reference: None,
        message_id: None,
        at: Utc::now(),
        expires_at: None,
    };
    p.ledger.top_up(&top).await.unwrap();
    let attempts: Vec<_> = (0..25)
        .map(|_| {
            let (m, d) = message(&p, &t.id, 3600);
            let store = p.messages.clone();
            tokio::spawn(async move { store.insert_with_debit(&m, &d).await })
        })
        .collect();
    let mut ok = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::InsufficientCredits) => {}
            // DynamoDB may cancel a transaction that conflicts with another in flight:
            // nothing was written, exactly like a refusal.
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let credits = p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits;
    assert!(credits >= 0);
    assert_eq!(credits, 7 - ok);
    let page = p
        .messages
        .list_messages(
            &t.id,
            &MessageQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.messages.len() as i64, ok, "one message per debit");
    assert!(ok >= 1);
}

async fn statuses_move_only_forward_and_failed_yields_only_to_delivered_or_read(p: Ports) {
    let t = onboarded(&p, 10).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    let at = Utc::now();
    let none = StatusChange::default();
    let claim = StatusChange {
        count_attempt: true,
        ..Default::default()
    };
    let go = |to, c: &StatusChange| {
        let (messages, t, id, c) = (p.messages.clone(), t.id.clone(), m.id.clone(), c.clone());
        async move { messages.transition(&t, &id, to, &c, at).await.unwrap() }
    };
    let Transition::Applied(r) = go(MessageStatus::Sending, &claim).await else {
        panic!("claim refused")
    };
    assert_eq!(r.attempts, 1);
    assert_eq!(
        go(MessageStatus::Sending, &claim).await,
        Transition::Refused,
        "claimed once only"
    );
    let with_wamid = StatusChange {
        wamid: Some("wamid.X".into()),
        ..Default::default()
    };
    assert!(matches!(
        go(MessageStatus::Sent, &with_wamid).await,
        Transition::Applied(_)
    ));
    let failed = StatusChange {
        error: Some(MessageError {
            code: 131026.into(),
            title: "undeliverable".into(),
        }),
        ..Default::default()
    };
    assert!(matches!(
        go(MessageStatus::Failed, &failed).await,
        Transition::Applied(_)
    ));
    assert_eq!(go(MessageStatus::Sent, &none).await, Transition::Refused);
    assert!(matches!(
        go(MessageStatus::Read, &none).await,
        Transition::Applied(_)
    ));
    assert_eq!(
        go(MessageStatus::Delivered, &none).await,
        Transition::Refused
    );
    let got = p.messages.get_message(&t.id, &m.id).await.unwrap().unwrap();
    assert_eq!(got.status, MessageStatus::Read);
    assert_eq!(got.wamid.as_deref(), Some("wamid.X"));
    // Read proves delivery: the failure's error no longer describes the message (its
    // trail still shows the failure).
    assert_eq!(got.error, None, "{:?}", got.error);
    let trail: Vec<MessageStatus> = got.events.iter().map(|e| e.status).collect();
    assert_eq!(
        trail,
        vec![
            MessageStatus::Accepted,
            MessageStatus::Sending,
            MessageStatus::Sent,
            MessageStatus::Failed,
            MessageStatus::Read
        ]
    );
    // The status index follows the status.
    let q = MessageQuery {
        status: Some(MessageStatus::Read),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        p.messages
            .list_messages(&t.id, &q)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    let q = MessageQuery {
        status: Some(MessageStatus::Accepted),
        limit: 10,
        ..Default::default()
    };
    assert!(p
        .messages
        .list_messages(&t.id, &q)
        .await
        .unwrap()
        .messages
        .is_empty());
}

async fn a_message_released_for_retry_can_be_claimed_again_but_only_from_sending(p: Ports) {
    let t = onboarded(&p, 10).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    let err = MessageError {
        code: 131000.into(),
        title: "try again".into(),
    };
    let now = Utc::now();
    assert_eq!(
        p.messages
            .release_for_retry(&t.id, &m.id, m.updated_at, &err, now)
            .await
            .unwrap(),
        Transition::Refused
    );
    let claim = StatusChange {
        count_attempt: true,
        ..Default::default()
    };
    let Transition::Applied(claimed) = p
        .messages
        .transition(&t.id, &m.id, MessageStatus::Sending, &claim, now)
        .await
        .unwrap()
    else {
        panic!("first claim refused")
    };
    assert!(matches!(
        p.messages
            .release_for_retry(&t.id, &m.id, claimed.updated_at, &err, now)
            .await
            .unwrap(),
        Transition::Applied(_)
    ));
    let Transition::Applied(r) = p
        .messages
        .transition(&t.id, &m.id, MessageStatus::Sending, &claim, now)
        .await
        .unwrap()
    else {
        panic!("second claim refused")
    };
    assert_eq!(r.attempts, 2);
    // The retried try's error is the message's until Meta accepts it: then it is gone.
    assert_eq!(
        r.error.as_ref().map(|e| e.code.clone()),
        Some(131000.into())
    );
    let sent = StatusChange {
        wamid: Some("wamid.R".into()),
        ..Default::default()
    };
    let Transition::Applied(r) = p
        .messages
        .transition(&t.id, &m.id, MessageStatus::Sent, &sent, now)
        .await
        .unwrap()
    else {
        panic!("sent refused")
    };
    assert_eq!(r.error, None);
    let got = p.messages.get_message(&t.id, &m.id).await.unwrap().unwrap();
    assert_eq!(got.error, None);
}

/// Every message of the tenant in `status`, newest first, a page of `limit` at a time.
async fn listed(p: &Ports, t: &TenantId, status: MessageStatus, limit: usize) -> Vec<MessageId> {
    let mut ids = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let q = MessageQuery {
            status: Some(status),
            limit,
            cursor: cursor.take(),
            ..Default::default()
        };
        let page = p.messages.list_messages(t, &q).await.unwrap();
        assert!(page.messages.len() <= limit);
        ids.extend(page.messages.into_iter().map(|m| m.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return ids,
        }
    }
    panic!("no last page");
}

async fn listing_by_any_status_pages_through_exactly_the_messages_in_it(p: Ports) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let go = |id: MessageId, to: MessageStatus| {
        let (p, t) = (&p, &t);
        async move {
            let moved = p
                .messages
                .transition(&t.id, &id, to, &StatusChange::default(), now)
                .await
                .unwrap();
            assert!(matches!(moved, Transition::Applied(_)), "{to:?}");
        }
    };
    // 12 messages through every move a message makes (the status index keeps entries
    // only for some statuses, keys.rs; a listing must not tell).
    let paths: [&[MessageStatus]; 12] = {
        use MessageStatus::*;
        [
            &[],
            &[Sending],
            &[Sent],
            &[Sending, Sent, Delivered],
            &[Sent, Read],
            &[Sending, Failed],
            &[Failed],
            &[Sent, Delivered],
            &[Sending],
            &[Sent, Delivered, Read],
            &[],
            &[Sending, Sent, Failed, Read],
        ]
    };
    let mut want: HashMap<MessageStatus, Vec<MessageId>> = HashMap::new();
    for path in paths {
        let (m, d) = message(&p, &t.id, 3600);
        p.messages.insert_with_debit(&m, &d).await.unwrap();
        for to in path {
            go(m.id.clone(), *to).await;
        }
        let last = path.last().copied().unwrap_or(MessageStatus::Accepted);
        want.entry(last).or_default().insert(0, m.id.clone());
        p.clock.advance(chrono::Duration::milliseconds(3));
    }
    // Scheduled ones: one still waiting, one due (accepted now).
    for due in [false, true] {
        let (mut m, d) = message(&p, &t.id, 3600);
        m.status = MessageStatus::Scheduled;
        m.events[0].status = MessageStatus::Scheduled;
        p.messages.insert_with_debit(&m, &d).await.unwrap();
        if due {
            go(m.id.clone(), MessageStatus::Accepted).await;
        }
        let now_in = if due {
            MessageStatus::Accepted
        } else {
            MessageStatus::Scheduled
        };
        want.entry(now_in).or_default().insert(0, m.id.clone());
        p.clock.advance(chrono::Duration::milliseconds(3));
    }
    // A claimed message put back for a retry is `accepted` again.
    let released = want[&MessageStatus::Sending][0].clone();
    let claimed_at = p
        .messages
        .get_message(&t.id, &released)
        .await
        .unwrap()
        .expect("the claimed message")
        .updated_at;
    let err = MessageError {
        code: 131000.into(),
        title: "try again".into(),
    };
    assert!(matches!(
        p.messages
            .release_for_retry(&t.id, &released, claimed_at, &err, now)
            .await
            .unwrap(),
        Transition::Applied(_)
    ));
    want.entry(MessageStatus::Sending)
        .or_default()
        .retain(|id| id != &released);
    let accepted = want.entry(MessageStatus::Accepted).or_default();
    accepted.push(released);
    accepted.sort();
    accepted.reverse();
    for status in [
        MessageStatus::Accepted,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
        MessageStatus::Scheduled,
    ] {
        let expected = want.get(&status).cloned().unwrap_or_default();
        for limit in [1, 2, 100] {
            assert_eq!(
                listed(&p, &t.id, status, limit).await,
                expected,
                "{status:?}, pages of {limit}"
            );
        }
    }
}

/// A filtered page that fills in the middle of what the store read for it goes on exactly
/// after its last message: none of the matches read past the full page is skipped. Newest
/// first: delivered, read, delivered, delivered, in pages of two (the store reads two
/// messages at a time for a page of two: the first read finds one match, the second two).
async fn a_status_page_filled_midway_through_a_read_skips_no_match(p: Ports) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let mut delivered = Vec::new();
    for last in [
        MessageStatus::Delivered,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Delivered,
    ] {
        let (m, d) = message(&p, &t.id, 3600);
        p.messages.insert_with_debit(&m, &d).await.unwrap();
        for to in [MessageStatus::Sent, last] {
            let moved = p
                .messages
                .transition(&t.id, &m.id, to, &StatusChange::default(), now)
                .await
                .unwrap();
            assert!(matches!(moved, Transition::Applied(_)), "{to:?}");
        }
        if last == MessageStatus::Delivered {
            delivered.insert(0, m.id.clone());
        }
        p.clock.advance(chrono::Duration::milliseconds(3));
    }
    for limit in [1, 2, 3] {
        assert_eq!(
            listed(&p, &t.id, MessageStatus::Delivered, limit).await,
            delivered,
            "pages of {limit}"
        );
    }
}

async fn messages_page_newest_first_with_cursors_and_time_bounds(p: Ports) {
    let t = onboarded(&p, 100).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (m, d) = message(&p, &t.id, 3600);
        p.messages.insert_with_debit(&m, &d).await.unwrap();
        ids.push(m.id.clone());
        p.clock.advance(chrono::Duration::seconds(1));
    }
    let other = onboarded(&p, 10).await;
    let (m, d) = message(&p, &other.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();

    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let q = MessageQuery {
            limit: 2,
            cursor: cursor.clone(),
            ..Default::default()
        };
        let page = p.messages.list_messages(&t.id, &q).await.unwrap();
        seen.extend(page.messages.iter().map(|m| m.id.clone()));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(
        seen, newest_first,
        "every message once, newest first, none of the other tenant's"
    );

    let first = p
        .messages
        .get_message(&t.id, &ids[1])
        .await
        .unwrap()
        .unwrap();
    let last = p
        .messages
        .get_message(&t.id, &ids[3])
        .await
        .unwrap()
        .unwrap();
    let q = MessageQuery {
        since: Some(first.created_at),
        until: Some(last.created_at),
        limit: 10,
        ..Default::default()
    };
    let got: Vec<MessageId> = p
        .messages
        .list_messages(&t.id, &q)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        got,
        vec![ids[2].clone(), ids[1].clone()],
        "since inclusive, until exclusive"
    );

    let bad = MessageQuery {
        cursor: Some("not-a-cursor".into()),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(
        p.messages.list_messages(&t.id, &bad).await.unwrap_err(),
        StoreError::InvalidCursor
    );
}

/// A cursor is a position among the tenant's messages: under another status filter or
/// other bounds it goes on after the same message, and a range that holds nothing (its
/// `until` at or before its `since`, or a cursor under its `since`) is an empty last page.
async fn a_messages_cursor_goes_on_after_its_message_under_any_filter_and_bounds(p: Ports) {
    let t = onboarded(&p, 100).await;
    let mut ids = Vec::new();
    let mut at = Vec::new();
    for i in 0..5 {
        let (m, d) = message(&p, &t.id, 3600);
        p.messages.insert_with_debit(&m, &d).await.unwrap();
        if i % 2 == 1 {
            let moved = p
                .messages
                .transition(
                    &t.id,
                    &m.id,
                    MessageStatus::Failed,
                    &StatusChange::default(),
                    p.clock.now(),
                )
                .await
                .unwrap();
            assert!(matches!(moved, Transition::Applied(_)));
        }
        ids.push(m.id.clone());
        at.push(m.created_at);
        p.clock.advance(chrono::Duration::seconds(1));
    }
    let page = |q: MessageQuery| {
        let p = &p;
        let t = &t;
        async move {
            let page = p.messages.list_messages(&t.id, &q).await.unwrap();
            let got: Vec<MessageId> = page.messages.into_iter().map(|m| m.id).collect();
            (got, page.next_cursor)
        }
    };
    // Newest first: 4, 3 (failed), then the cursor after 3.
    let (first, cursor) = page(MessageQuery {
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(first, vec![ids[4].clone(), ids[3].clone()]);
    let cursor = cursor.expect("a next page");
    let after = |q: MessageQuery| MessageQuery {
        cursor: Some(cursor.clone()),
        ..q
    };
    let failed = page(after(MessageQuery {
        status: Some(MessageStatus::Failed),
        limit: 10,
        ..Default::default()
    }))
    .await;
    assert_eq!(
        failed,
        (vec![ids[1].clone()], None),
        "the failed ones after 3"
    );
    let accepted = page(after(MessageQuery {
        status: Some(MessageStatus::Accepted),
        limit: 10,
        ..Default::default()
    }))
    .await;
    assert_eq!(accepted.0, vec![ids[2].clone(), ids[0].clone()]);
    let under_since = page(after(MessageQuery {
        since: Some(at[3]),
        limit: 10,
        ..Default::default()
    }))
    .await;
    assert_eq!(under_since, (vec![], None), "nothing after 3 from 3 on");
    let above_until = page(after(MessageQuery {
        until: Some(at[1]),
        limit: 10,
        ..Default::default()
    }))
    .await;
    assert_eq!(
        above_until.0,
        vec![ids[0].clone()],
        "the range starts at its top"
    );
    // A failed listing's cursor goes on in the unfiltered listing too.
    let (one, failed_cursor) = page(MessageQuery {
        status: Some(MessageStatus::Failed),
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(one, vec![ids[3].clone()]);
    let rest = page(MessageQuery {
        cursor: failed_cursor,
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(rest.0, vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    for (since, until) in [(at[3], at[1]), (at[2], at[2])] {
        for status in [
            None,
            Some(MessageStatus::Failed),
            Some(MessageStatus::Accepted),
        ] {
            let empty = page(MessageQuery {
                since: Some(since),
                until: Some(until),
                status,
                limit: 10,
                ..Default::default()
            })
            .await;
            assert_eq!(empty, (vec![], None), "{since} .. {until}, {status:?}");
        }
    }
}

async fn expired_items_are_invisible_then_removed_by_the_sweep(p: Ports) {
    let t = onboarded(&p, 10).await;
    let (m, d) = message(&p, &t.id, 60);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    p.messages
        .set_wamid(&t.id, &m.id, "wamid.EXP", m.expires_at)
        .await
        .unwrap();
    assert!(p
        .messages
        .message_by_wamid("wamid.EXP")
        .await
        .unwrap()
        .is_some());
    p.clock.advance(chrono::Duration::seconds(120));
    assert_eq!(p.messages.get_message(&t.id, &m.id).await.unwrap(), None);
    assert_eq!(
        p.messages.message_by_wamid("wamid.EXP").await.unwrap(),
        None
    );
    let q = MessageQuery {
        limit: 10,
        ..Default::default()
    };
    assert!(p
        .messages
        .list_messages(&t.id, &q)
        .await
        .unwrap()
        .messages
        .is_empty());
    let now = p.clock.now();
    assert_eq!(
        p.messages
            .transition(
                &t.id,
                &m.id,
                MessageStatus::Sending,
                &StatusChange::default(),
                now
            )
            .await
            .unwrap(),
        Transition::Refused,
        "an expired message cannot be revived"
    );
    let removed = sweep(&p).await.deleted;
    assert_eq!(
        removed.get("messages"),
        Some(&2),
        "the message and its wamid index item: {removed:?}"
    );
    // The tenant (active configuration) has no expiry and stays.
    assert!(p.tenants.get_tenant(&t.id).await.unwrap().is_some());
    assert_eq!(
        sweep(&p).await.deleted.values().sum::<usize>(),
        0,
        "idempotent"
    );
}

async fn a_wamid_leads_back_to_its_message(p: Ports) {
    let t = onboarded(&p, 10).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    assert_eq!(p.messages.message_by_wamid("wamid.A").await.unwrap(), None);
    p.messages
        .set_wamid(&t.id, &m.id, "wamid.A", None)
        .await
        .unwrap();
    assert_eq!(
        p.messages.message_by_wamid("wamid.A").await.unwrap(),
        Some((t.id.clone(), m.id.clone()))
    );
    assert_eq!(
        p.messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .wamid
            .as_deref(),
        Some("wamid.A")
    );
}

async fn a_wamid_indexed_alone_leads_back_and_the_sent_transition_records_it(p: Ports) {
    let t = onboarded(&p, 10).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    p.messages
        .index_wamid(&t.id, &m.id, "wamid.B", None)
        .await
        .unwrap();
    assert_eq!(
        p.messages.message_by_wamid("wamid.B").await.unwrap(),
        Some((t.id.clone(), m.id.clone()))
    );
    let change = StatusChange {
        wamid: Some("wamid.B".into()),
        ..Default::default()
    };
    let sent = p
        .messages
        .transition(&t.id, &m.id, MessageStatus::Sent, &change, Utc::now())
        .await
        .unwrap();
    assert!(matches!(sent, Transition::Applied(_)));
    let stored = p.messages.get_message(&t.id, &m.id).await.unwrap().unwrap();
    assert_eq!(stored.wamid.as_deref(), Some("wamid.B"));
    assert_eq!(stored.status, MessageStatus::Sent);
}

/// The memory store hands out the record it holds: a write after the peek must replace it,
/// not change the one the peeker holds (as a DynamoDB read is a copy).
async fn a_peeked_message_stays_as_it_was_read_while_the_stored_one_moves_on(p: Ports) {
    let t = onboarded(&p, 10).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    let before = p
        .messages
        .peek_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    let change = StatusChange {
        wamid: Some("wamid.P".into()),
        ..Default::default()
    };
    let moved = p
        .messages
        .transition(&t.id, &m.id, MessageStatus::Sent, &change, Utc::now())
        .await
        .unwrap();
    assert!(matches!(moved, Transition::Applied(_)));
    assert_eq!(before.status, MessageStatus::Accepted);
    assert_eq!(before.wamid, None);
    // Read strongly: a peek may be a moment behind on DynamoDB.
    let after = p.messages.get_message(&t.id, &m.id).await.unwrap().unwrap();
    assert_eq!(after.status, MessageStatus::Sent);
    assert_eq!(after.wamid.as_deref(), Some("wamid.P"));
    assert_eq!(
        before.status,
        MessageStatus::Accepted,
        "still as it was read"
    );
}

async fn queued_messages_come_back_until_deleted_and_end_on_the_dead_letter_queue(p: Ports) {
    p.queue.send("one").await.unwrap();
    let got = p.queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "one");
    assert_eq!(got[0].receive_count, 1);
    assert!(
        p.queue
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "hidden while in flight"
    );
    p.queue
        .retry_after(&got[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = p.queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    p.queue.delete(&again[0].receipt).await.unwrap();
    p.queue
        .retry_after(&again[0].receipt, Duration::ZERO)
        .await
        .ok();
    assert!(
        p.queue
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "deleted for good"
    );

    p.queue.send("poison").await.unwrap();
    let mut receives = 0;
    for _ in 0..15 {
        let got = p
            .queue
            .receive(1, Duration::from_millis(200))
            .await
            .unwrap();
        let Some(m) = got.first() else { break };
        receives += 1;
        p.queue
            .retry_after(&m.receipt, Duration::ZERO)
            .await
            .unwrap();
    }
    assert_eq!(receives, 10, "the template's maxReceiveCount");
    let parked = p.queue.dead_letters(10).await.unwrap();
    assert_eq!(
        parked.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(),
        vec!["poison"]
    );
}

async fn a_delayed_batch_stays_hidden_until_it_is_due_then_arrives_whole(p: Ports) {
    let delayed: Vec<String> = (0..12).map(|i| format!("paced-{i}")).collect();
    // Twelve: two SQS calls of up to ten, each entry with the delay.
    p.queue
        .send_batch_delayed(&delayed, Duration::from_secs(2))
        .await
        .unwrap();
    p.queue.send("at-once").await.unwrap();
    let now = p.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(
        now.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec!["at-once"],
        "only the undelayed one is visible at first"
    );
    let mut got: Vec<String> = Vec::new();
    for _ in 0..20 {
        got.extend(
            p.queue
                .receive(10, Duration::from_secs(1))
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.body),
        );
        if got.len() >= 12 {
            break;
        }
    }
    got.sort();
    let mut want = delayed.clone();
    want.sort();
    assert_eq!(got, want, "every delayed one, once due");
}

/// Large jobs (a template's components may take most of a 256 KiB request) sent together,
/// as a dispatcher batch's hops are: SQS refuses a batch whose bodies together pass the
/// queue's largest message, so they go in as many calls as that takes, and all arrive.
async fn jobs_whose_bodies_together_pass_one_batchs_bytes_are_all_queued(p: Ports) {
    let bodies: Vec<String> = (0..6)
        .map(|i| format!("big-{i}-{}", "x".repeat(200 * 1024)))
        .collect();
    p.queue
        .send_batch_delayed(&bodies, Duration::from_secs(1))
        .await
        .expect("queued");
    let mut got: Vec<String> = Vec::new();
    for _ in 0..20 {
        for m in p.queue.receive(10, Duration::from_secs(1)).await.unwrap() {
            p.queue.delete(&m.receipt).await.unwrap();
            got.push(m.body);
        }
        if got.len() >= bodies.len() {
            break;
        }
    }
    got.sort();
    assert_eq!(got, bodies, "each once");
}

async fn a_batch_of_received_messages_is_deleted_in_one_call(p: Ports) {
    let bodies: Vec<String> = (0..12).map(|i| format!("batch-{i}")).collect();
    p.queue.send_batch(&bodies).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(p.queue.receive(10, Duration::from_secs(1)).await.unwrap());
        if got.len() == 12 {
            break;
        }
    }
    assert_eq!(got.len(), 12, "all twelve received");
    // Eleven deleted together (two SQS calls of up to ten); one given back.
    let (kept, done) = got.split_first().unwrap();
    let receipts: Vec<String> = done.iter().map(|m| m.receipt.clone()).collect();
    p.queue.delete_batch(&receipts).await.unwrap();
    p.queue.delete_batch(&[]).await.unwrap();
    p.queue
        .retry_after(&kept.receipt, Duration::ZERO)
        .await
        .unwrap();
    for m in done {
        p.queue.retry_after(&m.receipt, Duration::ZERO).await.ok();
    }
    let again = p.queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        again.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec![kept.body.as_str()],
        "only the one not deleted comes back"
    );
}

/// Receives every visible message, making each visible again at once, until all have
/// been received the template's 10 times and are parked.
async fn park_everything(q: &dyn DispatchQueue) {
    for _ in 0..15 {
        let got = q.receive(10, Duration::from_millis(200)).await.unwrap();
        if got.is_empty() {
            return;
        }
        for m in got {
            q.retry_after(&m.receipt, Duration::ZERO).await.unwrap();
        }
    }
    panic!("messages still on the queue after 15 rounds");
}

async fn parked_messages_are_listed_in_place_and_redriven_by_id_or_all_at_once(p: Ports) {
    let before = Utc::now() - chrono::Duration::minutes(5);
    for body in ["a", "b", "c"] {
        p.queue.send(body).await.unwrap();
    }
    park_everything(p.queue.as_ref()).await;

    let listed = p.queue.dead_letters(10).await.unwrap();
    let mut bodies: Vec<&str> = listed.iter().map(|d| d.body.as_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["a", "b", "c"]);
    for d in &listed {
        assert!(!d.id.is_empty());
        assert!(d.receive_count >= 1, "{d:?}");
        assert!(d.sent_at > before && d.sent_at <= Utc::now(), "{d:?}");
    }
    assert!(
        !format!("{listed:?}").contains("\"b\""),
        "a dead letter's Debug hides its body"
    );
    // Listing takes nothing away, and stops at the limit.
    assert_eq!(p.queue.dead_letters(10).await.unwrap().len(), 3);
    assert_eq!(p.queue.dead_letters(2).await.unwrap().len(), 2);

    // By id: that one goes back to the source queue, counted from zero.
    let b = listed.iter().find(|d| d.body == "b").unwrap().id.clone();
    let unknown = "no-such-dead-letter".to_owned();
    let moved = p
        .queue
        .redrive(Some(&[b.clone(), unknown]), 100)
        .await
        .unwrap();
    assert_eq!(moved.moved, vec![b.clone()]);
    assert!(!moved.more);
    assert!(
        moved.unsent.is_empty(),
        "the letters left alone are not still_parked: {:?}",
        moved.unsent
    );
    let back = p.queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].body, "b");
    assert_eq!(back[0].receive_count, 1);
    p.queue.delete(&back[0].receipt).await.unwrap();
    let left = p.queue.dead_letters(10).await.unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|d| d.id != b));

    // All, bounded per call: one, then the rest.
    let first = p.queue.redrive(None, 1).await.unwrap();
    assert_eq!((first.moved.len(), first.more), (1, true));
    assert!(first.unsent.is_empty(), "{:?}", first.unsent);
    let rest = p.queue.redrive(None, 100).await.unwrap();
    assert_eq!((rest.moved.len(), rest.more), (1, false));
    assert!(p.queue.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(
        p.queue.redrive(None, 100).await.unwrap(),
        Redriven::default()
    );
    let mut again: Vec<String> = p
        .queue
        .receive(10, Duration::from_secs(1))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    again.sort();
    assert_eq!(again, ["a", "c"]);
}

async fn secrets_keep_the_previous_version_during_rotation(p: Ports) {
    let name = format!("kirim-test/{}/token", ulid::Ulid::new());
    assert_eq!(p.secrets.store().get_secret(&name).await.unwrap(), None);
    p.secrets
        .store()
        .put_secret(&name, &Secret::new("v1"))
        .await
        .unwrap();
    assert_eq!(
        p.secrets.store().get_secret(&name).await.unwrap(),
        Some(Secret::new("v1"))
    );
    p.secrets
        .store()
        .put_secret(&name, &Secret::new("v2"))
        .await
        .unwrap();
    assert_eq!(
        p.secrets.store().get_secret(&name).await.unwrap(),
        Some(Secret::new("v2"))
    );
    assert_eq!(
        p.secrets.store().get_previous_secret(&name).await.unwrap(),
        Some(Secret::new("v1"))
    );
    let rotated = p.secrets.store().rotated_at(&name).await.unwrap();
    assert!(rotated.is_some(), "the rotation time is known");
    p.secrets.store().delete_secret(&name).await.unwrap();
    assert_eq!(p.secrets.store().rotated_at(&name).await.unwrap(), None);
    assert_eq!(p.secrets.store().get_secret(&name).await.unwrap(), None);
    // Deleting it again (a close-out that runs again) succeeds: the deletion stands.
    p.secrets.store().delete_secret(&name).await.unwrap();
}

/// A staged version is read by its id and by nothing that reads the current one until it
/// is promoted; a secret first written staged is current at once (there is nothing else);
/// versions stay readable by id after others replace them.
async fn a_staged_secret_version_is_current_only_once_promoted_and_read_by_id_meanwhile(p: Ports) {
    let name = format!("kirim-test/{}/callback", ulid::Ulid::new());
    let store = p.secrets.store();
    let v1 = store.stage_secret(&name, &Secret::new("s1")).await.unwrap();
    assert_eq!(
        store.get_secret(&name).await.unwrap(),
        Some(Secret::new("s1"))
    );
    let v2 = store.stage_secret(&name, &Secret::new("s2")).await.unwrap();
    assert_ne!(v1, v2);
    assert_eq!(
        store.get_secret(&name).await.unwrap(),
        Some(Secret::new("s1")),
        "staged only: the current one is unchanged"
    );
    assert_eq!(
        store.get_secret_version(&name, &v2).await.unwrap(),
        Some(Secret::new("s2"))
    );
    store.promote_secret(&name, &v2).await.unwrap();
    assert_eq!(
        store.get_secret(&name).await.unwrap(),
        Some(Secret::new("s2"))
    );
    assert_eq!(
        store.get_previous_secret(&name).await.unwrap(),
        Some(Secret::new("s1"))
    );
    // Promoting the current one again (a retried change) changes nothing.
    store.promote_secret(&name, &v2).await.unwrap();
    assert_eq!(
        store.get_previous_secret(&name).await.unwrap(),
        Some(Secret::new("s1"))
    );
    // A change whose setting was never written: staged, never promoted.
    let v3 = store.stage_secret(&name, &Secret::new("s3")).await.unwrap();
    assert_eq!(
        store.get_secret(&name).await.unwrap(),
        Some(Secret::new("s2"))
    );
    for (v, want) in [(&v1, "s1"), (&v2, "s2"), (&v3, "s3")] {
        assert_eq!(
            store.get_secret_version(&name, v).await.unwrap(),
            Some(Secret::new(want))
        );
    }
    assert_eq!(
        store
            .get_secret_version(&name, "00000000000000000000000000000000")
            .await
            .unwrap(),
        None,
        "an unknown version"
    );
    store.delete_secret(&name).await.unwrap();
    assert_eq!(store.get_secret_version(&name, &v2).await.unwrap(), None);
}

/// Several processes provisioning the same new secret at once (local mode's starts, tests
/// sharing one moto): every write succeeds and one of the values is current.
async fn concurrent_first_writes_of_one_secret_all_succeed(p: Ports) {
    let name = format!("kirim-test/{}/shared", ulid::Ulid::new());
    let writes = (0..8).map(|i| {
        let p = p.clone();
        let name = name.clone();
        async move {
            p.secrets
                .store()
                .put_secret(&name, &Secret::new(format!("v{i}")))
                .await
        }
    });
    for r in futures::future::join_all(writes).await {
        assert!(r.is_ok(), "a concurrent first write failed: {r:?}");
    }
    let current = p.secrets.store().get_secret(&name).await.unwrap();
    assert!(
        current.is_some_and(|s| s.expose().starts_with('v')),
        "one of the values is current"
    );
    p.secrets.store().delete_secret(&name).await.unwrap();
}

/// The time of a Meta token's replacement is kept on an open tenant (active or suspended:
/// a suspended one is fixed so before its resume), and refused for an unknown tenant
/// (`NotFound`, no phantom tenant) and a closed one (`Conflict`).
async fn a_meta_token_replacement_is_recorded_on_an_open_tenant_only(p: Ports) {
    let t = onboarded(&p, 0).await;
    assert_eq!(
        p.tenants
            .get_tenant(&t.id)
            .await
            .unwrap()
            .unwrap()
            .meta_token_changed_at,
        None
    );
    let at = p.clock.now();
    let updated = p
        .tenants
        .set_meta_token_changed_at(&t.id, at)
        .await
        .unwrap();
    assert_eq!(updated.meta_token_changed_at, Some(at));
    assert_eq!(
        updated.credits, t.credits,
        "the rest of the tenant as it was"
    );
    let read = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(read.meta_token_changed_at, Some(at));
    assert_eq!(read.token_changed_at(), at, "later than any status change");
    p.tenants
        .set_status(
            &t.id,
            TenantStatus::Suspended,
            Some("meta 190"),
            p.clock.now(),
        )
        .await
        .unwrap();
    p.clock.advance(chrono::Duration::seconds(1));
    let later = p.clock.now();
    let suspended = p
        .tenants
        .set_meta_token_changed_at(&t.id, later)
        .await
        .unwrap();
    assert_eq!(suspended.meta_token_changed_at, Some(later));
    assert_eq!(suspended.status, TenantStatus::Suspended);
    assert!(matches!(
        p.tenants
            .set_meta_token_changed_at(&TenantId::generate(), later)
            .await,
        Err(StoreError::NotFound)
    ));
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, None, p.clock.now())
        .await
        .unwrap();
    p.clock.advance(chrono::Duration::seconds(1));
    assert!(matches!(
        p.tenants
            .set_meta_token_changed_at(&t.id, p.clock.now())
            .await,
        Err(StoreError::Conflict(_))
    ));
    let closed = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(closed.meta_token_changed_at, Some(later), "nothing written");
}

/// A replacement makes its value current whatever the secret's state: absent (created),
/// live (a new version, the old one previous), or deleted — on Secrets Manager scheduled
/// for deletion in its recovery window, where a plain put leaves it reading as absent.
async fn a_replaced_secret_is_current_whether_it_was_absent_live_or_being_deleted(p: Ports) {
    let store = p.secrets.store();
    let name = format!("kirim-test/{}/tenants/t/meta-token", ulid::Ulid::new());
    store
        .replace_secret(&name, &Secret::new("v1"))
        .await
        .unwrap();
    assert_eq!(
        store.get_secret(&name).await.unwrap(),
        Some(Secret::new("v1"))
    );
    store
        .replace_secret(&name, &Secret::new("v2"))
        .await
        .unwrap();
    assert_eq!(
        store.get_secret(&name).await.unwrap(),
        Some(Secret::new("v2"))
    );
    assert_eq!(
        store.get_previous_secret(&name).await.unwrap(),
        Some(Secret::new("v1"))
    );
    store.delete_secret(&name).await.unwrap();
    assert_eq!(
        store.get_secret(&name).await.unwrap(),
        None,
        "being deleted"
    );
    store
        .replace_secret(&name, &Secret::new("v3"))
        .await
        .unwrap();
    assert_eq!(
        store.get_secret(&name).await.unwrap(),
        Some(Secret::new("v3")),
        "restored and replaced"
    );
    store.delete_secret(&name).await.unwrap();
}

/// The secrets under a name prefix are listed a page at a time, with their creation and
/// last change times and never a value: every one under the prefix once, none elsewhere (a
/// sibling prefix, the prefix inside a longer name), none scheduled for deletion.
async fn secrets_are_listed_by_name_prefix_a_page_at_a_time_with_their_dates(p: Ports) {
    let root = format!("kirim-test/{}", ulid::Ulid::new());
    let prefix = format!("{root}/tenants/");
    let store = p.secrets.store();
    let before = Utc::now() - chrono::Duration::seconds(5);
    let mut under: Vec<String> = (0..5).map(|i| format!("{prefix}t{i}/meta-token")).collect();
    let elsewhere = [
        format!("{root}/tenantsx/t0/meta-token"),
        format!("{root}/operator-token"),
        format!("other/{prefix}t0/meta-token"),
    ];
    for name in under.iter().chain(&elsewhere) {
        store.put_secret(name, &Secret::new("v")).await.unwrap();
    }
    let gone = under.remove(4);
    store.delete_secret(&gone).await.unwrap();
    let mut listed = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..20 {
        let got = store
            .list_secrets(&prefix, page.as_deref(), 2)
            .await
            .unwrap();
        assert!(got.secrets.len() <= 2, "{got:?}");
        listed.extend(got.secrets);
        page = got.next;
        if page.is_none() {
            break;
        }
    }
    assert_eq!(page, None, "the listing ends");
    let mut names: Vec<String> = listed.iter().map(|s| s.name.clone()).collect();
    names.sort();
    assert_eq!(
        names, under,
        "each one under the prefix, once; none deleted"
    );
    let after = Utc::now() + chrono::Duration::seconds(5);
    for s in &listed {
        let created = s.created_at.expect("a creation time");
        let changed = s.changed_at.expect("a last change time");
        assert!(before <= created && created <= after, "{s:?}");
        assert!(created <= changed && changed <= after, "{s:?}");
    }
    for name in under.iter().chain(&elsewhere) {
        store.delete_secret(name).await.unwrap();
    }
    assert_eq!(
        store
            .list_secrets(&prefix, None, 100)
            .await
            .unwrap()
            .secrets,
        vec![],
        "all deleted"
    );
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory_adapters {
            $( #[tokio::test] async fn $name() { super::$name(super::memory()).await } )*
        }
        mod aws_adapters_on_moto {
            $( #[tokio::test] async fn $name() { super::$name(super::aws().await).await } )*
        }
    };
}
pub(crate) use contract;

contract!(
    listing_by_any_status_pages_through_exactly_the_messages_in_it,
    a_status_page_filled_midway_through_a_read_skips_no_match,
    a_messages_cursor_goes_on_after_its_message_under_any_filter_and_bounds,
    a_tenant_is_found_by_id_phone_number_and_key_hash,
    metas_suspension_applies_only_to_an_active_tenant_unchanged_since_it_was_read,
    a_status_change_made_again_at_the_same_time_with_the_same_reason_is_a_repeat,
    a_suspension_reason_from_meta_kept_unscrubbed_is_read_back_scrubbed,
    a_phone_number_id_onboarded_twice_is_a_conflict_that_writes_nothing,
    a_debit_records_the_message_and_the_ledger_entry_together,
    a_failure_title_kept_unscrubbed_is_read_back_scrubbed_by_every_read,
    a_debit_of_a_closed_tenant_is_refused_as_closed_and_writes_nothing,
    a_top_up_for_an_unknown_tenant_is_not_found,
    a_closed_tenant_takes_no_top_up_or_setting_but_its_refunds,
    concurrent_top_ups_with_one_key_credit_once_and_the_others_see_the_first,
    a_keyed_top_up_for_an_unknown_tenant_keeps_no_key,
    concurrent_debits_never_take_the_balance_below_zero,
    statuses_move_only_forward_and_failed_yields_only_to_delivered_or_read,
    a_message_released_for_retry_can_be_claimed_again_but_only_from_sending,
    messages_page_newest_first_with_cursors_and_time_bounds,
    expired_items_are_invisible_then_removed_by_the_sweep,
    a_wamid_leads_back_to_its_message,
    a_wamid_indexed_alone_leads_back_and_the_sent_transition_records_it,
    a_peeked_message_stays_as_it_was_read_while_the_stored_one_moves_on,
    queued_messages_come_back_until_deleted_and_end_on_the_dead_letter_queue,
    a_batch_of_received_messages_is_deleted_in_one_call,
    jobs_whose_bodies_together_pass_one_batchs_bytes_are_all_queued,
    a_delayed_batch_stays_hidden_until_it_is_due_then_arrives_whole,
    parked_messages_are_listed_in_place_and_redriven_by_id_or_all_at_once,
    secrets_keep_the_previous_version_during_rotation,
    concurrent_first_writes_of_one_secret_all_succeed,
    secrets_are_listed_by_name_prefix_a_page_at_a_time_with_their_dates,
    a_staged_secret_version_is_current_only_once_promoted_and_read_by_id_meanwhile,
    a_meta_token_replacement_is_recorded_on_an_open_tenant_only,
    a_replaced_secret_is_current_whether_it_was_absent_live_or_being_deleted,
);
