//! The warm-process read cache (`kirim::adapters::cache`, issue #13): two deps on one store
//! stand for two Lambdas, one with the cache (`wiring::READ_CACHE_TTL`) and one without; a
//! change made through the other is seen within the TTL by the test clock, a change made
//! through the cached one at once, and the credits are never cached.

use std::sync::Arc;
use std::time::Duration;

use kirim::adapters::aws::{DynamoStore, SecretsManagerStore};
use kirim::adapters::memory::{MemorySecrets, MemoryStore};
use kirim::config::{Backend, Settings};
use kirim::domain::TenantId;
use kirim::ports::*;
use kirim::service::errors::ServiceError;
use kirim::service::{audit, auth, numbers, Backends, Deps, Stores};
use kirim::wiring::{NotWired, Port, READ_CACHE_TTL};
use kirim_tests::{moto_sdk, unique_stack, ManualClock};

use crate::contract::{key_for, tenant};
use crate::stepped_audit::{draft_on as draft, Stepped, Steps};

pub(crate) fn deps<S: Stores>(
    store: Arc<S>,
    secrets: Arc<dyn SecretStore>,
    clock: Arc<ManualClock>,
    read_cache_ttl: Duration,
) -> Deps {
    Deps::new(Backends {
        store,
        queue: Arc::new(NotWired::new("the cache tests", Port::DispatchQueue)),
        callback_queue: Arc::new(NotWired::new("the cache tests", Port::CallbackQueue)),
        secrets,
        data_keys: Arc::new(NotWired::new("the cache tests", Port::DataKeys)),
        meta: Arc::new(NotWired::new("the cache tests", Port::Meta)),
        clock,
        settings: Settings::default(),
        secret_ttl: Duration::ZERO,
        read_cache_ttl,
    })
}

/// (the cached deps, the uncached deps on the same store, the clock).
pub(crate) async fn two_processes(b: Backend) -> (Deps, Deps, Arc<ManualClock>) {
    let clock = ManualClock::new();
    match b {
        Backend::Memory => {
            let store = Arc::new(MemoryStore::new(clock.clone()));
            let secrets: Arc<dyn SecretStore> = Arc::new(MemorySecrets::default());
            (
                deps(
                    store.clone(),
                    secrets.clone(),
                    clock.clone(),
                    READ_CACHE_TTL,
                ),
                deps(store, secrets, clock.clone(), Duration::ZERO),
                clock,
            )
        }
        Backend::Aws => {
            let sdk = moto_sdk().await;
            let stack = kirim_infra::bootstrap::ensure_stack(&sdk, &unique_stack())
                .await
                .expect("stack in moto");
            let store = Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                stack.table.clone(),
                clock.clone(),
            ));
            let secrets: Arc<dyn SecretStore> = Arc::new(SecretsManagerStore::new(
                aws_sdk_secretsmanager::Client::new(&sdk),
            ));
            (
                deps(
                    store.clone(),
                    secrets.clone(),
                    clock.clone(),
                    READ_CACHE_TTL,
                ),
                deps(store, secrets, clock.clone(), Duration::ZERO),
                clock,
            )
        }
    }
}

/// Just under the TTL, and the TTL itself.
fn almost_ttl() -> chrono::Duration {
    chrono::Duration::from_std(READ_CACHE_TTL).unwrap_or_default() - chrono::Duration::seconds(1)
}

async fn a_key_revoked_by_another_process_stops_authenticating_within_five_seconds(b: Backend) {
    assert!(
        READ_CACHE_TTL <= Duration::from_secs(5),
        "README promises 5 s"
    );
    let (cached, other, clock) = two_processes(b).await;
    let t = tenant(10);
    let token = format!("kirim_{}", kirim::domain::new_id());
    let key = ApiKeyRecord {
        key_hash: kirim::secret::token_hash(&token),
        ..key_for(&t)
    };
    other.tenants.create_tenant(&t, &key, None).await.unwrap();
    assert!(auth::authenticate(&cached, Some(&token)).await.is_ok());

    other
        .api_keys
        .revoke_api_key(&t.id, &key.id, clock.now())
        .await
        .unwrap();
    assert!(
        auth::authenticate(&other, Some(&token)).await.is_err(),
        "the uncached process refuses at once"
    );
    clock.advance(almost_ttl());
    assert!(
        auth::authenticate(&cached, Some(&token)).await.is_ok(),
        "the warm process still knows the key (the documented bound)"
    );
    clock.advance(chrono::Duration::seconds(1));
    assert!(matches!(
        auth::authenticate(&cached, Some(&token)).await,
        Err(ServiceError::Unauthenticated)
    ));
}

async fn a_key_revoked_through_the_same_process_is_refused_at_once(b: Backend) {
    let (cached, other, clock) = two_processes(b).await;
    let t = tenant(10);
    let token = format!("kirim_{}", kirim::domain::new_id());
    let key = ApiKeyRecord {
        key_hash: kirim::secret::token_hash(&token),
        ..key_for(&t)
    };
    other.tenants.create_tenant(&t, &key, None).await.unwrap();
    assert!(auth::authenticate(&cached, Some(&token)).await.is_ok());
    cached
        .api_keys
        .revoke_api_key(&t.id, &key.id, clock.now())
        .await
        .unwrap();
    assert!(auth::authenticate(&cached, Some(&token)).await.is_err());
}

/// The store under a cache whose next key read (or tenant read) stops, once it has read,
/// until the test lets it go: a write through the same cache lands while that read is in
/// flight.
struct Paused {
    tenants: Arc<dyn TenantStore>,
    keys: Arc<dyn ApiKeyStore>,
    key_read: std::sync::atomic::AtomicBool,
    tenant_read: std::sync::atomic::AtomicBool,
    read: tokio::sync::Notify,
    go: tokio::sync::Notify,
}

impl Paused {
    fn over(d: &Deps) -> Arc<Self> {
        Arc::new(Paused {
            tenants: d.tenants.clone(),
            keys: d.api_keys.clone(),
            key_read: Default::default(),
            tenant_read: Default::default(),
            read: tokio::sync::Notify::new(),
            go: tokio::sync::Notify::new(),
        })
    }

    async fn stop_if(&self, armed: &std::sync::atomic::AtomicBool) {
        if armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.read.notify_one();
            self.go.notified().await;
        }
    }

    /// Deps whose tenants and keys are read through a cache over this store.
    fn cached(self: &Arc<Self>, d: &Deps, clock: Arc<ManualClock>) -> Deps {
        let cache = Arc::new(kirim::adapters::cache::ReadCache::new(
            self.clone(),
            READ_CACHE_TTL,
            clock,
        ));
        let mut d = d.clone();
        d.tenants = cache.clone();
        d.api_keys = cache;
        d
    }
}

impl kirim::adapters::cache::LaggingView for Paused {
    fn lagging_view(store: &Arc<Self>) -> Arc<Self> {
        store.clone()
    }
}

kirim_tests::pass_through! {
    impl TenantStore for Paused via tenants {
        async fn get_tenant(
            &self,
            id: &TenantId,
        ) -> Result<Option<Tenant>, kirim::store_error::StoreError> {
            let t = self.tenants.get_tenant(id).await;
            self.stop_if(&self.tenant_read).await;
            t
        }
        async fn api_key_by_hash(
            &self,
            key_hash: &str,
        ) -> Result<Option<ApiKeyRecord>, kirim::store_error::StoreError> {
            let r = self.tenants.api_key_by_hash(key_hash).await;
            self.stop_if(&self.key_read).await;
            r
        }
    }
}

kirim_tests::pass_through! {
    impl ApiKeyStore for Paused via keys {}
}

/// A request that missed the cache and read the key just before this process revoked it
/// answers with what it read, but does not put it back in the cache: the next request reads
/// the store again and is refused (it would have kept working here for up to 5 s).
async fn a_key_read_in_flight_while_this_process_revokes_it_is_not_cached_back(b: Backend) {
    let (_, other, clock) = two_processes(b).await;
    let t = tenant(10);
    let token = format!("kirim_{}", kirim::domain::new_id());
    let key = ApiKeyRecord {
        key_hash: kirim::secret::token_hash(&token),
        ..key_for(&t)
    };
    other.tenants.create_tenant(&t, &key, None).await.unwrap();
    let store = Paused::over(&other);
    let cached = store.cached(&other, clock.clone());
    store
        .key_read
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (in_flight, ()) = tokio::join!(auth::authenticate(&cached, Some(&token)), async {
        store.read.notified().await;
        cached
            .api_keys
            .revoke_api_key(&t.id, &key.id, clock.now())
            .await
            .unwrap();
        store.go.notify_one();
    });
    assert!(
        in_flight.is_ok(),
        "the request in flight read the key before its revocation"
    );
    assert!(matches!(
        auth::authenticate(&cached, Some(&token)).await,
        Err(ServiceError::Unauthenticated)
    ));
}

/// The same for the tenant's access facts: a suspension through this process while a read
/// of the tenant is in flight is not undone by that read.
async fn a_tenant_read_in_flight_while_this_process_suspends_it_is_not_cached_back(b: Backend) {
    let (_, other, clock) = two_processes(b).await;
    let t = tenant(10);
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let store = Paused::over(&other);
    let cached = store.cached(&other, clock.clone());
    store
        .tenant_read
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (in_flight, ()) = tokio::join!(auth::load_tenant(&cached, &t.id), async {
        store.read.notified().await;
        cached
            .tenants
            .set_status(&t.id, TenantStatus::Suspended, Some("test"), clock.now())
            .await
            .unwrap();
        store.go.notify_one();
    });
    assert_eq!(in_flight.unwrap().status, TenantStatus::Active);
    assert_eq!(
        auth::load_tenant(&cached, &t.id).await.unwrap().status,
        TenantStatus::Suspended
    );
}

/// A tier the operator sets through a warm process is read back by that process at once
/// (the numbers list, the dispatcher's pace): its cached tenant is dropped, as every other
/// tenant write through it drops it.
async fn a_throughput_tier_set_through_the_same_process_is_read_at_once(b: Backend) {
    let (cached, other, _clock) = two_processes(b).await;
    let t = tenant(10);
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let warm = cached
        .tenants
        .tenant_for_access(&t.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(warm.throughput_per_sec, None);
    cached.throughput.set_throughput(&t.id, 1000).await.unwrap();
    let read = cached
        .tenants
        .tenant_for_access(&t.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.throughput_per_sec, Some(1000));
}

async fn a_suspension_by_another_process_bites_within_five_seconds_and_credits_are_never_cached(
    b: Backend,
) {
    let (cached, other, clock) = two_processes(b).await;
    let t = tenant(10);
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let seen = auth::load_tenant(&cached, &t.id).await.unwrap();
    assert_eq!(seen.status, TenantStatus::Active);

    other
        .tenants
        .set_status(&t.id, TenantStatus::Suspended, Some("test"), clock.now())
        .await
        .unwrap();
    clock.advance(almost_ttl());
    assert_eq!(
        auth::load_tenant(&cached, &t.id).await.unwrap().status,
        TenantStatus::Active,
        "the warm process still has the tenant active (the documented bound)"
    );
    assert_eq!(
        cached
            .tenants
            .get_tenant(&t.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TenantStatus::Suspended,
        "get_tenant (what the balance is read with) is never cached"
    );
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        auth::load_tenant(&cached, &t.id).await.unwrap().status,
        TenantStatus::Suspended
    );
}

/// A dispatcher that saw the tenant suspended (its cache may keep that up to its TTL) asks
/// the table before failing a message on it: a message accepted just after the resume,
/// by a process that saw the resume, is not failed `tenant_suspended` and refunded.
async fn a_message_accepted_after_a_resume_is_not_failed_for_the_suspension_a_warm_dispatcher_remembers(
    b: Backend,
) {
    use kirim::domain::Content;
    use kirim::domain::MessageStatus;
    use kirim::service::jobs::{DispatchJob, MessageFacts, QueueJob};
    let (cached, other, clock) = two_processes(b).await;
    let t = tenant(10);
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    other
        .tenants
        .set_status(&t.id, TenantStatus::Suspended, Some("test"), clock.now())
        .await
        .unwrap();
    assert_eq!(
        cached
            .tenants
            .tenant_for_access(&t.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TenantStatus::Suspended,
        "the warm dispatcher has it suspended"
    );
    other
        .tenants
        .set_status(&t.id, TenantStatus::Active, None, clock.now())
        .await
        .unwrap();
    let (m, debit) = crate::contract::message_for(&t.id, clock.now());
    other.messages.insert_with_debit(&m, &debit).await.unwrap();
    // The message's dispatch job, `retry_at` its backoff's end.
    let job_of = |m: &kirim::domain::MessageRecord, retry_at| {
        QueueJob::Send(DispatchJob {
            tenant_id: t.id.clone(),
            message_id: m.id.clone(),
            content: Content::Text { body: "hi".into() },
            request_id: None,
            send_at: None,
            broadcast_id: None,
            facts: Some(MessageFacts::of(m)),
            retry_at,
            recheck: false,
            refused: None,
            refused_claim: None,
            key_hash: None,
        })
    };
    let job = job_of(&m, None);
    // Meta is not wired in these deps: the send itself goes no further than its checks.
    let _ = kirim::service::dispatch::handle(&cached, &job.to_body().unwrap()).await;
    let stored = other
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !(stored.status == MessageStatus::Failed
            && stored
                .error
                .as_ref()
                .is_some_and(|e| e.code == "tenant_suspended")),
        "{stored:?}"
    );

    // A message waiting out a retry backoff is not hurried out of it either (the warm
    // process still has the tenant suspended: its clock has not moved): it waits on.
    assert_eq!(
        cached
            .tenants
            .tenant_for_access(&t.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TenantStatus::Suspended
    );
    let (mut waiting, debit) = crate::contract::message_for(&t.id, clock.now());
    waiting.id = kirim::domain::MessageId::from_trusted(ulid::Ulid::new().to_string());
    other
        .messages
        .insert_with_debit(&waiting, &debit)
        .await
        .unwrap();
    let job = job_of(&waiting, Some(clock.now() + chrono::Duration::hours(1)));
    let outcome = kirim::service::dispatch::handle_in_batch(&cached, &job.to_body().unwrap()).await;
    assert!(
        matches!(outcome, kirim::service::jobs::Outcome::Again(_, _)),
        "{outcome:?}"
    );
    let stored = other
        .messages
        .get_message(&t.id, &waiting.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.status, stored.attempts),
        (MessageStatus::Accepted, 0)
    );
}

fn number_of(t: &Tenant, id: &str, clock: &ManualClock) -> PhoneNumberRecord {
    PhoneNumberRecord {
        tenant_id: t.id.clone(),
        phone_number_id: id.into(),
        waba_id: t.waba_id.clone(),
        display_phone_number: None,
        quality: kirim::domain::TemplateQuality::Green,
        throughput_per_sec: Some(80),
        added_at: clock.now(),
        quality_meta_at: None,
        throughput_meta_at: None,
        hold: None,
        resumed_at_ms: None,
    }
}

fn template_of(t: &Tenant, clock: &ManualClock) -> CatalogueTemplate {
    kirim_tests::approved_template(&t.waba_id, "order_update", "en", clock.now())
}

async fn template_status(deps: &Deps, t: &Tenant) -> Option<kirim::domain::TemplateStatus> {
    deps.templates
        .get_template(&t.waba_id, "order_update", "en")
        .await
        .unwrap()
        .map(|t| t.status)
}

async fn callback_url(deps: &Deps, t: &Tenant) -> Option<String> {
    deps.status_callbacks
        .get_status_callback(&t.id)
        .await
        .unwrap()
        .map(|c| c.url)
}

/// The reads the cache refreshes eventually consistent (the template, the callback
/// setting, the phone number's owner; the sender above) still see another process's
/// change after the TTL; on DynamoDB the replication lag comes on top (README "Warm
/// caches"), which moto does not have.
async fn a_template_a_callback_setting_and_a_numbers_owner_changed_by_another_process_are_seen_after_five_seconds(
    b: Backend,
) {
    let (cached, other, clock) = two_processes(b).await;
    let t = tenant(10);
    assert_eq!(
        cached
            .tenants
            .tenant_by_phone_number_id(&t.phone_number_id)
            .await
            .unwrap(),
        None
    );
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    assert_eq!(
        cached
            .tenants
            .tenant_by_phone_number_id(&t.phone_number_id)
            .await
            .unwrap(),
        Some(t.id.clone()),
        "an owner onboarded by another process is found at once: absence is not cached"
    );

    let template = template_of(&t, &clock);
    other.templates.put_template(&template).await.unwrap();
    let approved = Some(kirim::domain::TemplateStatus::Approved);
    assert_eq!(template_status(&cached, &t).await, approved);
    other
        .status_callbacks
        .put_status_callback(&StatusCallback {
            tenant_id: t.id.clone(),
            url: "https://example.com/kirim".into(),
            secret_name: "callback".into(),
            secret_version: None,
            updated_at: clock.now(),
        })
        .await
        .unwrap();
    assert!(callback_url(&cached, &t).await.is_some());

    other
        .templates
        .update_template(
            &t.waba_id,
            "order_update",
            "en",
            kirim::domain::TemplateChange::Status(kirim::domain::TemplateStatus::Paused),
            kirim::ports::ChangeStamp::new(clock.now(), None),
        )
        .await
        .unwrap();
    assert!(other
        .status_callbacks
        .delete_status_callback(&t.id)
        .await
        .unwrap());
    clock.advance(almost_ttl());
    assert_eq!(
        template_status(&cached, &t).await,
        approved,
        "the warm process still has the template approved (the documented bound)"
    );
    assert!(
        callback_url(&cached, &t).await.is_some(),
        "and the callback set (the documented bound)"
    );
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        template_status(&cached, &t).await,
        Some(kirim::domain::TemplateStatus::Paused)
    );
    assert_eq!(callback_url(&cached, &t).await, None);
}

async fn a_sender_changed_by_another_process_is_seen_within_five_seconds_and_a_new_one_at_once(
    b: Backend,
) {
    let (cached, other, clock) = two_processes(b).await;
    let t = tenant(10);
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let id = format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
    assert!(
        matches!(
            numbers::sender(&cached, &t, Some(&id)).await,
            Err(ServiceError::UnknownSender(_))
        ),
        "not the tenant's number yet"
    );
    other
        .numbers
        .add_phone_number(&number_of(&t, &id, &clock))
        .await
        .unwrap();
    let seen = numbers::sender(&cached, &t, Some(&id))
        .await
        .expect("a number added by another process is found at once: absence is not cached");
    assert_eq!(seen.throughput_per_sec, Some(80));

    other
        .numbers
        .set_number_quality(
            &t.id,
            &id,
            Some(kirim::domain::TemplateQuality::Yellow),
            Some(250),
            None,
        )
        .await
        .unwrap();
    clock.advance(almost_ttl());
    assert_eq!(
        numbers::sender(&cached, &t, Some(&id))
            .await
            .unwrap()
            .throughput_per_sec,
        Some(80),
        "the warm process still paces by the number it read (the documented bound)"
    );
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        numbers::sender(&cached, &t, Some(&id))
            .await
            .unwrap()
            .throughput_per_sec,
        Some(250)
    );

    other.numbers.remove_phone_number(&t.id, &id).await.unwrap();
    clock.advance(almost_ttl());
    assert!(
        numbers::sender(&cached, &t, Some(&id)).await.is_ok(),
        "a removal by another process bites within the TTL"
    );
    clock.advance(chrono::Duration::seconds(1));
    assert!(matches!(
        numbers::sender(&cached, &t, Some(&id)).await,
        Err(ServiceError::UnknownSender(_))
    ));
}

async fn the_default_sender_has_its_item_from_onboarding_and_is_read_once_within_five_seconds(
    b: Backend,
) {
    let (cached, other, clock) = two_processes(b).await;
    let t = tenant(10);
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    // As the dispatcher does: the tenant (cached), then its default sender.
    let t = auth::load_tenant(&cached, &t.id).await.unwrap();
    let seen = numbers::sender(&cached, &t, None).await.unwrap();
    assert_eq!(
        (seen.phone_number_id.as_str(), seen.throughput_per_sec),
        (t.phone_number_id.as_str(), None),
        "the onboarding stored the number's item"
    );
    assert!(other
        .numbers
        .set_number_quality(
            &t.id,
            &t.phone_number_id,
            Some(kirim::domain::TemplateQuality::Green),
            Some(250),
            None
        )
        .await
        .unwrap()
        .is_some());
    clock.advance(almost_ttl());
    assert_eq!(
        numbers::sender(&cached, &t, None)
            .await
            .unwrap()
            .throughput_per_sec,
        None,
        "remembered for the TTL: not read again"
    );
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        numbers::sender(&cached, &t, None)
            .await
            .unwrap()
            .throughput_per_sec,
        Some(250)
    );
}

/// An admin's default change goes by the tenant as it is, not a warm copy: after another
/// process moved the default away from X and removed X, a stale copy neither answers
/// "X is already the default" without writing nor stores X's item again.
async fn a_default_change_through_a_warm_copy_of_the_tenant_reads_it_afresh(b: Backend) {
    let (cached, other, clock) = two_processes(b).await;
    let stale = tenant(10);
    other
        .tenants
        .create_tenant(&stale, &key_for(&stale), None)
        .await
        .unwrap();
    let (y, z) = (
        format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000),
        format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000),
    );
    for id in [&y, &z] {
        other
            .numbers
            .add_phone_number(&number_of(&stale, id, &clock))
            .await
            .unwrap();
    }
    let x = stale.phone_number_id.clone();
    numbers::set_default(&other, &stale, &y).await.unwrap();
    numbers::remove(&other, &stale.id, &x).await.unwrap();

    assert!(
        matches!(
            numbers::set_default(&cached, &stale, &x).await,
            Err(ServiceError::NotFound)
        ),
        "X is no longer the tenant's"
    );
    let set = numbers::set_default(&cached, &stale, &z).await.unwrap();
    assert_eq!(set.phone_number_id, z);
    assert_eq!(
        other.numbers.get_phone_number(&stale.id, &x).await.unwrap(),
        None,
        "the removed number's item is not stored again"
    );
    let now = other.tenants.get_tenant(&stale.id).await.unwrap().unwrap();
    assert_eq!(now.phone_number_id, z);
    // A number this process read (warm) and the other removed since: 404, not 409.
    assert!(
        numbers::sender(&cached, &now, Some(&y)).await.is_ok(),
        "read, remembered"
    );
    numbers::remove(&other, &stale.id, &y).await.unwrap();
    assert!(
        matches!(
            numbers::set_default(&cached, &stale, &y).await,
            Err(ServiceError::NotFound)
        ),
        "no longer the tenant's"
    );
}

async fn a_sender_removed_through_the_same_process_is_refused_at_once(b: Backend) {
    let (cached, _other, clock) = two_processes(b).await;
    let t = tenant(10);
    cached
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let id = format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
    cached
        .numbers
        .add_phone_number(&number_of(&t, &id, &clock))
        .await
        .unwrap();
    assert!(numbers::sender(&cached, &t, Some(&id)).await.is_ok());
    cached
        .numbers
        .remove_phone_number(&t.id, &id)
        .await
        .unwrap();
    assert!(matches!(
        numbers::sender(&cached, &t, Some(&id)).await,
        Err(ServiceError::UnknownSender(_))
    ));
}

/// A number taken over from a closed tenant through a warm process is routed to its new
/// owner at once there (the owner it cached is dropped), for the onboarding and the add.
async fn a_number_taken_over_through_the_same_process_is_routed_to_its_new_owner_at_once(
    b: Backend,
) {
    let (cached, _other, clock) = two_processes(b).await;
    let a = tenant(0);
    cached
        .tenants
        .create_tenant(&a, &key_for(&a), None)
        .await
        .unwrap();
    let extra = format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
    cached
        .numbers
        .add_phone_number(&number_of(&a, &extra, &clock))
        .await
        .unwrap();
    // The warm process has A cached as the owner of both numbers.
    for pnid in [&a.phone_number_id, &extra] {
        assert_eq!(
            cached
                .tenants
                .tenant_by_phone_number_id(pnid)
                .await
                .unwrap(),
            Some(a.id.clone())
        );
    }
    cached
        .tenants
        .set_status(&a.id, TenantStatus::Closed, None, clock.now())
        .await
        .unwrap();
    let mut b_tenant = tenant(0);
    b_tenant.phone_number_id = a.phone_number_id.clone();
    cached
        .tenants
        .onboard_over_closed(&b_tenant, None, &key_for(&b_tenant), None, &a.id)
        .await
        .unwrap();
    let c = tenant(0);
    cached
        .tenants
        .create_tenant(&c, &key_for(&c), None)
        .await
        .unwrap();
    cached
        .numbers
        .add_phone_number_over_closed(&number_of(&c, &extra, &clock), &a.id)
        .await
        .unwrap();
    for (pnid, owner) in [(&a.phone_number_id, &b_tenant.id), (&extra, &c.id)] {
        assert_eq!(
            cached
                .tenants
                .tenant_by_phone_number_id(pnid)
                .await
                .unwrap(),
            Some(owner.clone()),
            "the process that moved it"
        );
    }
}

/// Counts the reads of a chain's head before an append.
#[derive(Default)]
struct CountingTips {
    tips: std::sync::atomic::AtomicUsize,
}

impl CountingTips {
    fn tips(&self) -> usize {
        self.tips.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Steps for CountingTips {
    fn on_tip(&self) {
        self.tips.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The chain's events link one to the next and end at its head.
async fn assert_linked(deps: &Deps, t: &TenantId, n: u64) {
    let chain = t.to_string();
    let events = deps.audit.ascending(&chain, None, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    for pair in events.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "event {} links to {}",
            pair[1].seq, pair[0].seq
        );
    }
    let head = deps.audit.head(&chain).await.unwrap().unwrap();
    assert_eq!((head.seq, &head.hash), (n, &events[events.len() - 1].hash));
}

async fn a_warm_process_appends_to_an_audit_chain_without_reading_its_head_until_another_moves_it(
    b: Backend,
) {
    let (mut cached, other, clock) = two_processes(b).await;
    let counting = Arc::new(Stepped {
        inner: cached.audit.clone(),
        steps: CountingTips::default(),
    });
    cached.audit = counting.clone();
    let t = TenantId::generate();
    for action in ["POST /v1/one", "POST /v1/two", "POST /v1/three"] {
        audit::record(&cached, draft(&t, action)).await.unwrap();
    }
    assert_eq!(
        counting.steps.tips(),
        1,
        "the head is read once, then remembered"
    );
    assert_linked(&other, &t, 3).await;

    // Another process appends: the remembered head is refused, the chain read again.
    audit::record(&other, draft(&t, "POST /v1/elsewhere"))
        .await
        .unwrap();
    audit::record(&cached, draft(&t, "POST /v1/four"))
        .await
        .unwrap();
    assert_eq!(counting.steps.tips(), 2);
    assert_linked(&other, &t, 5).await;
    // Contended: read before each append for the TTL, as without the memory.
    audit::record(&cached, draft(&t, "POST /v1/five"))
        .await
        .unwrap();
    assert_eq!(counting.steps.tips(), 3);
    // After the TTL it is remembered again, and read again a minute after the last read
    // however often this process appended meanwhile.
    clock.advance(chrono::Duration::from_std(READ_CACHE_TTL).unwrap_or_default());
    audit::record(&cached, draft(&t, "POST /v1/six"))
        .await
        .unwrap();
    let every = chrono::Duration::from_std(audit::HEAD_READ_EVERY).unwrap_or_default();
    for _ in 0..3 {
        clock.advance(every / 4);
        audit::record(&cached, draft(&t, "POST /v1/more"))
            .await
            .unwrap();
    }
    assert_eq!(counting.steps.tips(), 4);
    clock.advance(every / 4);
    audit::record(&cached, draft(&t, "POST /v1/later"))
        .await
        .unwrap();
    assert_eq!(
        counting.steps.tips(),
        5,
        "read again a minute after the last read"
    );
    assert_linked(&other, &t, 11).await;
}

/// A new operator token stored elsewhere (the provider's rotation, `put-secret-value`)
/// authenticates at once on a warm process that cached the old one: refused by the cached
/// copy, the token is read afresh (at most every 10 s), as Meta's app secret is. It was
/// refused for up to 5 minutes (the secret cache's time), exactly when an operator
/// rotating a leaked token needs the platform routes.
#[tokio::test]
async fn a_rotated_operator_token_works_at_once_on_a_process_that_cached_the_old_one() {
    use kirim::secret::Secret;
    use kirim::service::SecretCache;
    let mut deps =
        kirim::wiring::memory_deps(kirim_tests::test_settings(), ManualClock::new()).unwrap();
    let store = deps.secrets.store().clone();
    deps.secrets = Arc::new(SecretCache::new(store.clone(), Duration::from_secs(300)));
    let name = deps.settings.operator_token_secret.clone();
    store
        .put_secret(&name, &Secret::new("op_first_0123456789"))
        .await
        .unwrap();
    assert_eq!(
        auth::authenticate(&deps, Some("op_first_0123456789"))
            .await
            .unwrap(),
        auth::Caller::Operator
    );
    store
        .put_secret(&name, &Secret::new("op_second_0123456789"))
        .await
        .unwrap();
    assert_eq!(
        auth::authenticate(&deps, Some("op_second_0123456789"))
            .await
            .map_err(|e| e.to_string()),
        Ok(auth::Caller::Operator),
        "the new token at once"
    );
    // The old one keeps its grace window (the cached previous version was read afresh).
    assert_eq!(
        auth::authenticate(&deps, Some("op_first_0123456789"))
            .await
            .map_err(|e| e.to_string()),
        Ok(auth::Caller::Operator),
        "the old token within the rotation grace"
    );
    // An unknown API key is not taken for an operator token: refused, as before.
    assert!(matches!(
        auth::authenticate(&deps, Some("kirim_unknown_0123456789")).await,
        Err(ServiceError::Unauthenticated)
    ));
}

/// A new verify token stored (the runbook: change it here, then in Meta) answers Meta's
/// "Verify and save" at once on a warm process that cached the old one: refused by the
/// cached copy, it is read afresh (at most every 10 s). It was refused for up to the
/// cache's 5 minutes.
#[tokio::test]
async fn a_changed_verify_token_answers_metas_handshake_at_once_on_a_warm_process() {
    use kirim::secret::Secret;
    use kirim::service::{webhook, SecretCache};
    let mut deps =
        kirim::wiring::memory_deps(kirim_tests::test_settings(), ManualClock::new()).unwrap();
    let store = deps.secrets.store().clone();
    deps.secrets = Arc::new(SecretCache::new(store.clone(), Duration::from_secs(300)));
    let name = deps.settings.meta_verify_token_secret.clone();
    store
        .put_secret(&name, &Secret::new("verify-first-0123"))
        .await
        .unwrap();
    let answers = |token: &'static str| {
        let deps = &deps;
        async move {
            webhook::verify_subscription(deps, Some("subscribe"), Some(token))
                .await
                .unwrap()
        }
    };
    assert!(answers("verify-first-0123").await);
    store
        .put_secret(&name, &Secret::new("verify-second-0123"))
        .await
        .unwrap();
    assert!(answers("verify-second-0123").await, "the new token at once");
    assert!(!answers("verify-first-0123").await, "the old one no more");
    assert!(!answers("a-guess").await);
    assert!(
        !webhook::verify_subscription(&deps, Some("unsubscribe"), Some("verify-second-0123"))
            .await
            .unwrap()
    );
}

/// A secret another process set (a status callback's, through the settings route on
/// another instance) is used at once by a process that cached the old one, when what
/// names it says it changed recently; a copy read well after the change serves from the
/// cache.
#[tokio::test]
async fn a_secret_changed_elsewhere_is_read_afresh_while_its_change_is_recent() {
    use chrono::Utc;
    use kirim::secret::Secret;
    use kirim::service::SecretCache;
    let store: Arc<dyn SecretStore> = Arc::new(MemorySecrets::default());
    let name = "kirim/tenants/t/status-callback-secret";
    let put = |v: &'static str| {
        let store = store.clone();
        async move { store.put_secret(name, &Secret::new(v)).await.unwrap() }
    };
    async fn read(cache: &SecretCache, changed_at: chrono::DateTime<Utc>) -> Option<String> {
        cache
            .current_unless_changed(
                "kirim/tenants/t/status-callback-secret",
                changed_at,
                Utc::now(),
            )
            .await
            .unwrap()
            .map(|s| s.expose().to_owned())
    }
    let cache = SecretCache::new(store.clone(), Duration::from_secs(300));
    put("old-secret-0123456789").await;
    assert!(cache.current(name).await.unwrap().is_some());
    // Another process puts the new one: the cache alone would keep the old one 5 minutes.
    put("new-secret-0123456789").await;
    let changed = Utc::now();
    assert_eq!(
        cache
            .current(name)
            .await
            .unwrap()
            .map(|s| s.expose().to_owned())
            .as_deref(),
        Some("old-secret-0123456789"),
        "cached"
    );
    assert_eq!(
        read(&cache, changed).await.as_deref(),
        Some("new-secret-0123456789")
    );
    // A change a minute ago, read since: served from the cache.
    let cache = SecretCache::new(store.clone(), Duration::from_secs(300));
    let a_minute_ago = Utc::now() - chrono::Duration::minutes(1);
    assert_eq!(
        read(&cache, a_minute_ago).await.as_deref(),
        Some("new-secret-0123456789")
    );
    put("third-secret-0123456789").await;
    assert_eq!(
        read(&cache, a_minute_ago).await.as_deref(),
        Some("new-secret-0123456789"),
        "from the cache"
    );
}

/// A request the balance cannot pay is refused before its queue job is sent, by a fresh
/// read: a warm process that saw the balance empty still accepts at once after a top-up
/// made through another (the cached copy only decides whether to look), and one that saw
/// it full is not refused here at all (the debit's condition decides then).
async fn a_balance_a_warm_copy_saw_empty_is_read_afresh_before_a_request_is_refused(b: Backend) {
    let (cached, other, clock) = two_processes(b).await;
    let t = tenant(0);
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let seen = auth::load_tenant(&cached, &t.id).await.unwrap();
    assert_eq!(seen.credits, 0);
    assert!(matches!(
        kirim::service::ledger::refuse_unpayable(&cached, &seen, 1).await,
        Err(ServiceError::InsufficientCredits)
    ));
    let top_up = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        amount: 5,
        kind: LedgerKind::TopUp,
        reference: None,
        message_id: None,
        at: clock.now(),
        expires_at: None,
    };
    other.ledger.top_up(&top_up).await.unwrap();
    let warm = auth::load_tenant(&cached, &t.id).await.unwrap();
    assert_eq!(warm.credits, 0, "the warm copy still says empty");
    kirim::service::ledger::refuse_unpayable(&cached, &warm, 5)
        .await
        .expect("paid for by the fresh balance");
    assert!(matches!(
        kirim::service::ledger::refuse_unpayable(&cached, &warm, 6).await,
        Err(ServiceError::InsufficientCredits)
    ));
}

/// `GET /v1/settings/ip-allowlist` answers the list as stored: a `PUT` answered by another
/// instance reads back at once on a warm one (whose access check still holds the old copy
/// of the tenant, which lets the call in).
async fn an_allow_list_replaced_through_another_process_reads_back_at_once(b: Backend) {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let (cached, other, _clock) = two_processes(b).await;
    let t = tenant(10);
    let token = format!("kirim_{}", kirim::domain::new_id());
    let key = ApiKeyRecord {
        key_hash: kirim::secret::token_hash(&token),
        ..key_for(&t)
    };
    other.tenants.create_tenant(&t, &key, None).await.unwrap();
    let app: axum::Router = kirim::http::app(cached.clone(), axum::Router::new()).into();
    let get = || async {
        let mut req = Request::get("/v1/settings/ip-allowlist")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(kirim::http::extract::ClientIp("127.0.0.1".parse().ok()));
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["cidrs"].clone()
    };
    assert_eq!(
        get().await,
        serde_json::json!([]),
        "warms the cached tenant"
    );
    let body = kirim::service::accounts::AllowListBody {
        cidrs: vec!["127.0.0.1".into(), "10.0.0.0/8".into()],
    };
    kirim::service::accounts::set_ip_allowlist(&other, &t.id, body)
        .await
        .unwrap();
    assert_eq!(
        get().await,
        serde_json::json!(["127.0.0.1/32", "10.0.0.0/8"]),
        "as stored"
    );
}

/// A url-only `PUT` of the status callback right after a `DELETE` made through another
/// process is refused `400` (a secret is required once none is set), though this process's
/// warm copy still has the old setting: the check reads the store, so the secret the
/// tenant turned off does not sign callbacks again.
async fn a_url_only_callback_put_after_a_delete_elsewhere_needs_a_secret_again(b: Backend) {
    use kirim::service::callbacks::{put_setting, CallbackUpdate};
    let (cached, other, _clock) = two_processes(b).await;
    let t = tenant(0);
    other
        .tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let update = |url: Option<&str>, secret: Option<&str>| CallbackUpdate {
        url: url.map(str::to_owned),
        secret: secret.map(str::to_owned),
    };
    put_setting(
        &other,
        &t.id,
        update(
            Some("https://hooks.example.com/a"),
            Some("a-secret-of-16-chars"),
        ),
    )
    .await
    .unwrap();
    assert!(cached
        .status_callbacks
        .get_status_callback(&t.id)
        .await
        .unwrap()
        .is_some());
    put_setting(&other, &t.id, update(None, None))
        .await
        .unwrap();
    let revived = put_setting(
        &cached,
        &t.id,
        update(Some("https://hooks.example.com/b"), None),
    )
    .await;
    assert!(
        matches!(&revived, Err(ServiceError::InvalidRequest(m)) if m.contains("secret is required")),
        "{revived:?}"
    );
}

on_both_backends!(
    a_number_taken_over_through_the_same_process_is_routed_to_its_new_owner_at_once,
    a_throughput_tier_set_through_the_same_process_is_read_at_once,
    an_allow_list_replaced_through_another_process_reads_back_at_once,
    a_url_only_callback_put_after_a_delete_elsewhere_needs_a_secret_again,
    a_balance_a_warm_copy_saw_empty_is_read_afresh_before_a_request_is_refused,
    a_default_change_through_a_warm_copy_of_the_tenant_reads_it_afresh,
    a_template_a_callback_setting_and_a_numbers_owner_changed_by_another_process_are_seen_after_five_seconds,
    a_warm_process_appends_to_an_audit_chain_without_reading_its_head_until_another_moves_it,
    a_sender_changed_by_another_process_is_seen_within_five_seconds_and_a_new_one_at_once,
    a_sender_removed_through_the_same_process_is_refused_at_once,
    the_default_sender_has_its_item_from_onboarding_and_is_read_once_within_five_seconds,
    a_key_revoked_by_another_process_stops_authenticating_within_five_seconds,
    a_key_revoked_through_the_same_process_is_refused_at_once,
    a_key_read_in_flight_while_this_process_revokes_it_is_not_cached_back,
    a_tenant_read_in_flight_while_this_process_suspends_it_is_not_cached_back,
    a_suspension_by_another_process_bites_within_five_seconds_and_credits_are_never_cached,
    a_message_accepted_after_a_resume_is_not_failed_for_the_suspension_a_warm_dispatcher_remembers,
);
