//! Test doubles over a real store: one that counts, delays or fails a method or two of a
//! port and hands every other call to the real adapter it wraps.
//!
//! ```ignore
//! struct Slow {
//!     inner: Arc<dyn MessageStore>,
//! }
//!
//! kirim_tests::pass_through! {
//!     impl MessageStore for Slow {
//!         async fn transition(&self, tenant: &TenantId, id: &MessageId, to: MessageStatus,
//!             change: &StatusChange, at: DateTime<Utc>) -> Result<Transition, StoreError> {
//!             tokio::time::sleep(Duration::from_millis(5)).await;
//!             self.inner.transition(tenant, id, to, change, at).await
//!         }
//!     }
//! }
//! ```
//!
//! The block names only the methods the double changes, written as in a plain
//! `#[async_trait] impl` (the port's methods callable in it, its names resolved as in the
//! double's file); every method it leaves out is passed on to the field `inner` (`impl
//! TenantStore for Paused via tenants { … }` names another field, `via 0` a tuple
//! struct's), which derefs to the port: an `Arc<dyn MessageStore>`, or an `Arc` of an
//! adapter. The double is the port as a hand-written impl would be: the same type, built
//! the same way.
//!
//! A method the port itself gives a default body (e.g. `MessageStore::peek_message`,
//! `TenantStore::tenant_for_access`) keeps, where its list says so, the port's default:
//! through the double's own methods (a double that fails `get_tenant` fails
//! `tenant_for_access` too), as a hand-written double that leaves it out does. A double
//! that wants the wrapped store's instead names it, passing it on. One exception:
//! `MessageStore::index_wamid` goes to the wrapped store's, not the port's default through
//! `set_wamid` (as the hand-written doubles had it), so a double that overrides `set_wamid`
//! does not see the calls made through `index_wamid` unless it names that one too.
//!
//! Ports covered: `MessageStore`, `TenantStore`, `ApiKeyStore`, `SecretStore`,
//! `BroadcastStore`, `StatusCallbackStore`, `UserStore`, `PhoneNumberStore`. When one of
//! them gains a method, only its list in [`pass_through!`] needs the new pass-through (one
//! line): no double changes. Another port gets an arm of its own the same way (its
//! methods' signatures, copied from the trait; a default body copied too where the double
//! should keep the port's default).

#[doc(hidden)]
pub use {async_trait::async_trait as __async_trait, kirim as __kirim};

/// The names the ports' signatures use, for the lists in [`pass_through!`].
#[doc(hidden)]
pub mod __types {
    pub use chrono::{DateTime, Utc};
    pub use kirim::domain::*;
    pub use kirim::ports::*;
    pub use kirim::secret::Secret;
    pub use kirim::store_error::StoreError;
    pub use std::{sync::Arc, time::Duration};
}

/// A double of a port that changes only the methods its block names and passes every other
/// to the real store it wraps. See [the module](crate::doubles) for its use.
///
/// When a port gains a method, its list here is the one place to add it (a line in the
/// shape of the others; with a `{ body }` before the `;` where the port's default, not the
/// wrapped store's method, is what a double should keep).
#[macro_export]
macro_rules! pass_through {
    (impl $port:ident for $double:ident { $($overrides:tt)* }) => {
        $crate::pass_through! { impl $port for $double via inner { $($overrides)* } }
    };

    (impl MessageStore for $double:ident via $field:tt { $($overrides:tt)* }) => {
        $crate::__pass_through! {
            MessageStore for $double via $field;
            overrides { $($overrides)* }
            methods {
                async fn insert_with_debit(&self, record: &MessageRecord, debit: &LedgerEntry) -> Result<(), StoreError>;
                async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<MessageRecord>, StoreError>;
                // The port's default: through the double's own `get_message`.
                async fn peek_message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<Arc<MessageRecord>>, StoreError> {
                    Ok(self.get_message(tenant, id).await?.map(Arc::new))
                };
                async fn list_messages(&self, tenant: &TenantId, query: &MessageQuery) -> Result<MessagePage, StoreError>;
                async fn transition(&self, tenant: &TenantId, id: &MessageId, to: MessageStatus, change: &StatusChange, at: DateTime<Utc>) -> Result<Transition, StoreError>;
                async fn record_overtaken(&self, seen: &MessageRecord, event: StatusEvent, priced: Option<&PricedMessage<'_>>) -> Result<bool, StoreError>;
                async fn fail_and_refund(&self, tenant: &TenantId, id: &MessageId, from: MessageStatus, change: &StatusChange, at: DateTime<Utc>, refund: Option<&LedgerEntry>) -> Result<Transition, StoreError>;
                async fn touch_unclaimed(&self, tenant: &TenantId, id: &MessageId, seen: DateTime<Utc>, at: DateTime<Utc>) -> Result<bool, StoreError>;
                async fn release_for_retry(&self, tenant: &TenantId, id: &MessageId, claimed_at: DateTime<Utc>, error: &MessageError, at: DateTime<Utc>) -> Result<Transition, StoreError>;
                async fn cancel_with_refund(&self, tenant: &TenantId, id: &MessageId, from: &[MessageStatus], error: &MessageError, refund: &LedgerEntry, at: DateTime<Utc>) -> Result<Transition, StoreError>;
                async fn set_wamid(&self, tenant: &TenantId, id: &MessageId, wamid: &str, expires_at: Option<i64>) -> Result<(), StoreError>;
                // The wrapped store's: its answer says whether a status may have come early.
                async fn index_wamid(&self, tenant: &TenantId, id: &MessageId, wamid: &str, expires_at: Option<i64>) -> Result<bool, StoreError>;
                async fn message_by_wamid(&self, wamid: &str) -> Result<Option<(TenantId, MessageId)>, StoreError>;
            }
        }
    };

    (impl TenantStore for $double:ident via $field:tt { $($overrides:tt)* }) => {
        $crate::__pass_through! {
            TenantStore for $double via $field;
            overrides { $($overrides)* }
            methods {
                // The port's default: through the double's own `onboard`.
                async fn create_tenant(&self, tenant: &Tenant, key: &ApiKeyRecord, initial: Option<&LedgerEntry>) -> Result<(), StoreError> {
                    self.onboard(tenant, None, key, initial).await
                };
                async fn onboard(&self, tenant: &Tenant, display_phone_number: Option<&str>, key: &ApiKeyRecord, initial: Option<&LedgerEntry>) -> Result<(), StoreError>;
                async fn onboard_over_closed(&self, tenant: &Tenant, display_phone_number: Option<&str>, key: &ApiKeyRecord, initial: Option<&LedgerEntry>, closed: &TenantId) -> Result<(), StoreError>;
                async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;
                // The port's default: through the double's own `get_tenant`.
                async fn tenant_for_access(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
                    self.get_tenant(id).await
                };
                async fn tenant_by_phone_number_id(&self, phone_number_id: &str) -> Result<Option<TenantId>, StoreError>;
                async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
                async fn tenants_by_waba(&self, waba_id: &str) -> Result<Vec<TenantId>, StoreError>;
                async fn set_ip_allowlist(&self, id: &TenantId, cidrs: &[String]) -> Result<(), StoreError>;
                async fn set_request_limits(&self, id: &TenantId, limits: RequestLimits) -> Result<Tenant, StoreError>;
                async fn set_meta_token_changed_at(&self, id: &TenantId, at: DateTime<Utc>) -> Result<Tenant, StoreError>;
                async fn set_status(&self, id: &TenantId, to: TenantStatus, reason: Option<&str>, at: DateTime<Utc>) -> Result<Tenant, StoreError>;
                async fn suspend_if_unchanged(&self, id: &TenantId, reason: &str, at: DateTime<Utc>, seen: Option<DateTime<Utc>>) -> Result<Option<Tenant>, StoreError>;
            }
        }
    };

    (impl ApiKeyStore for $double:ident via $field:tt { $($overrides:tt)* }) => {
        $crate::__pass_through! {
            ApiKeyStore for $double via $field;
            overrides { $($overrides)* }
            methods {
                async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
                async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError>;
                async fn list_api_keys_page(&self, tenant: &TenantId, limit: usize, cursor: Option<&str>) -> Result<ApiKeyPage, StoreError>;
                async fn get_api_key(&self, tenant: &TenantId, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
                async fn revoke_api_key(&self, tenant: &TenantId, id: &str, at: DateTime<Utc>) -> Result<Option<ApiKeyRecord>, StoreError>;
                async fn rotate_api_key(&self, tenant: &TenantId, old_id: &str, new: &ApiKeyRecord, old_expires_at: DateTime<Utc>) -> Result<(), StoreError>;
            }
        }
    };

    (impl SecretStore for $double:ident via $field:tt { $($overrides:tt)* }) => {
        $crate::__pass_through! {
            SecretStore for $double via $field;
            overrides { $($overrides)* }
            methods {
                async fn put_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError>;
                async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError>;
                async fn get_previous_secret(&self, name: &str) -> Result<Option<Secret>, StoreError>;
                async fn rotated_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
                async fn delete_secret(&self, name: &str) -> Result<(), StoreError>;
                async fn replace_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError>;
                async fn stage_secret(&self, name: &str, value: &Secret) -> Result<String, StoreError>;
                async fn promote_secret(&self, name: &str, version: &str) -> Result<(), StoreError>;
                async fn get_secret_version(&self, name: &str, version: &str) -> Result<Option<Secret>, StoreError>;
                async fn list_secrets(&self, prefix: &str, page: Option<&str>, limit: usize) -> Result<SecretPage, StoreError>;
            }
        }
    };

    (impl BroadcastStore for $double:ident via $field:tt { $($overrides:tt)* }) => {
        $crate::__pass_through! {
            BroadcastStore for $double via $field;
            overrides { $($overrides)* }
            methods {
                async fn create_broadcast(&self, broadcast: &Broadcast, recipients: &[PhoneNumber], debit: &LedgerEntry) -> Result<(), StoreError>;
                async fn create_broadcast_once(&self, broadcast: &Broadcast, recipients: &[PhoneNumber], debit: &LedgerEntry, key: &RequestKeyRecord) -> Result<BroadcastOnce, StoreError>;
                async fn broadcast_key(&self, tenant: &TenantId, key_hash: &str) -> Result<Option<RequestKeyRecord>, StoreError>;
                async fn get_broadcast(&self, tenant: &TenantId, id: &str) -> Result<Option<Broadcast>, StoreError>;
                async fn broadcast_recipients(&self, tenant: &TenantId, id: &str) -> Result<Option<Vec<PhoneNumber>>, StoreError>;
                async fn broadcast_progress(&self, tenant: &TenantId, id: &str, enqueued: usize, done: bool, hop: FanoutHop<'_>) -> Result<bool, StoreError>;
                async fn close_broadcast_unsent(&self, tenant: &TenantId, id: &str, enqueued: usize, unsent: usize, refund: Option<&LedgerEntry>, at: DateTime<Utc>) -> Result<bool, StoreError>;
                async fn record_unqueued(&self, tenant: &TenantId, id: &str, from: usize, to: usize, messages: &[MessageRecord], refund: Option<&LedgerEntry>, closing: UnqueuedClose) -> Result<CancelledRecipients, StoreError>;
                async fn start_broadcast(&self, tenant: &TenantId, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;
                async fn cancel_scheduled_broadcast(&self, tenant: &TenantId, id: &str, refund: &LedgerEntry, at: DateTime<Utc>) -> Result<bool, StoreError>;
                async fn set_broadcast_control(&self, tenant: &TenantId, id: &str, from: &[Option<BroadcastControl>], to: Option<BroadcastControl>, at: DateTime<Utc>) -> Result<bool, StoreError>;
                async fn claim_broadcast_message(&self, tenant: &TenantId, message: &MessageId, broadcast: &str, claim: &str, at: DateTime<Utc>) -> Result<BroadcastClaim, StoreError>;
                async fn list_broadcasts(&self, tenant: &TenantId, limit: usize, before: Option<&str>) -> Result<(Vec<Broadcast>, Option<String>), StoreError>;
                async fn broadcast_messages(&self, broadcast: &Broadcast, limit: usize, after: Option<&MessageId>) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError>;
                async fn broadcast_messages_consistent(&self, broadcast: &Broadcast, limit: usize, after: Option<&MessageId>) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError>;
                async fn insert_broadcast_message(&self, record: &MessageRecord) -> Result<bool, StoreError>;
                async fn broadcast_tally(&self, broadcast: &Broadcast) -> Result<BroadcastTally, StoreError>;
                // The port's default: through the double's own methods.
                async fn broadcast_tally_consistent(&self, broadcast: &Broadcast) -> Result<BroadcastTally, StoreError> {
                    self.broadcast_tally(broadcast).await
                };
            }
        }
    };

    (impl StatusCallbackStore for $double:ident via $field:tt { $($overrides:tt)* }) => {
        $crate::__pass_through! {
            StatusCallbackStore for $double via $field;
            overrides { $($overrides)* }
            methods {
                async fn put_status_callback(&self, setting: &StatusCallback) -> Result<(), StoreError>;
                async fn get_status_callback(&self, tenant: &TenantId) -> Result<Option<StatusCallback>, StoreError>;
                // The port's default: through the double's own methods.
                async fn get_status_callback_fresh(&self, tenant: &TenantId) -> Result<Option<StatusCallback>, StoreError> {
                    self.get_status_callback(tenant).await
                };
                async fn set_status_callback_url(&self, tenant: &TenantId, url: &str, updated_at: DateTime<Utc>) -> Result<bool, StoreError>;
                async fn delete_status_callback(&self, tenant: &TenantId) -> Result<bool, StoreError>;
                async fn owe_callback(&self, owed: &OwedCallback) -> Result<(), StoreError>;
                async fn owed_callbacks(&self, limit: usize) -> Result<Vec<OwedCallback>, StoreError>;
                async fn lease_owed_callback(&self, owed: &OwedCallback, until: i64) -> Result<bool, StoreError>;
                async fn forget_owed_callback(&self, owed: &OwedCallback) -> Result<(), StoreError>;
                async fn put_callback_failure(&self, failure: &CallbackFailure) -> Result<(), StoreError>;
                async fn callback_failures_page(&self, tenant: &TenantId, limit: usize, cursor: Option<&str>) -> Result<CallbackFailurePage, StoreError>;
            }
        }
    };

    (impl UserStore for $double:ident via $field:tt { $($overrides:tt)* }) => {
        $crate::__pass_through! {
            UserStore for $double via $field;
            overrides { $($overrides)* }
            methods {
                async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
                async fn get_user(&self, tenant: &TenantId, id: &str) -> Result<Option<UserRecord>, StoreError>;
                async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
                async fn list_users(&self, tenant: &TenantId) -> Result<Vec<UserRecord>, StoreError>;
                async fn list_users_page(&self, tenant: &TenantId, limit: usize, cursor: Option<&str>) -> Result<UserPage, StoreError>;
                async fn delete_user(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError>;
                async fn set_user_role(&self, tenant: &TenantId, id: &str, role: Role) -> Result<Option<Role>, StoreError>;
                async fn set_password(&self, tenant: &TenantId, id: &str, old: &str, new: &str) -> Result<bool, StoreError>;
                async fn begin_login(&self, counter: &LoginCounter, now: i64, policy: &LoginPolicy) -> Result<LoginGate, StoreError>;
                async fn login_failed(&self, counter: &LoginCounter, now: i64, policy: &LoginPolicy, ticket: LoginTicket) -> Result<i64, StoreError>;
                async fn login_released(&self, counter: &LoginCounter, now: i64, policy: &LoginPolicy, ticket: LoginTicket) -> Result<(), StoreError>;
                async fn clear_login_counter(&self, counter: &LoginCounter) -> Result<(), StoreError>;
                async fn clear_login_counters_of_email(&self, email_hash: &str) -> Result<usize, StoreError>;
                async fn set_pending_totp(&self, tenant: &TenantId, id: &str, secret: &str) -> Result<(), StoreError>;
                async fn confirm_totp(&self, tenant: &TenantId, id: &str, secret: &str, step: i64) -> Result<bool, StoreError>;
                async fn reseal_totp(&self, tenant: &TenantId, id: &str, old: &str, new: &str) -> Result<bool, StoreError>;
                async fn reset_totp(&self, tenant: &TenantId, id: &str) -> Result<Option<UserRecord>, StoreError>;
                async fn accept_totp_step(&self, tenant: &TenantId, id: &str, step: i64) -> Result<bool, StoreError>;
                async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
                async fn session_by_hash(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError>;
                async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError>;
                async fn touch_session(&self, token_hash: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
                async fn mark_second_factor(&self, token_hash: &str) -> Result<(), StoreError>;
                async fn two_factor_required(&self, tenant: &TenantId) -> Result<bool, StoreError>;
                async fn set_two_factor_required(&self, tenant: &TenantId, required: bool) -> Result<(), StoreError>;
            }
        }
    };

    (impl PhoneNumberStore for $double:ident via $field:tt { $($overrides:tt)* }) => {
        $crate::__pass_through! {
            PhoneNumberStore for $double via $field;
            overrides { $($overrides)* }
            methods {
                async fn add_phone_number(&self, number: &PhoneNumberRecord) -> Result<(), StoreError>;
                async fn add_phone_number_over_closed(&self, number: &PhoneNumberRecord, closed: &TenantId) -> Result<(), StoreError>;
                async fn put_phone_number_if_absent(&self, number: &PhoneNumberRecord) -> Result<bool, StoreError>;
                async fn get_phone_number(&self, tenant: &TenantId, phone_number_id: &str) -> Result<Option<PhoneNumberRecord>, StoreError>;
                async fn list_phone_numbers(&self, tenant: &TenantId) -> Result<Vec<PhoneNumberRecord>, StoreError>;
                async fn remove_phone_number(&self, tenant: &TenantId, phone_number_id: &str) -> Result<(), StoreError>;
                async fn set_default_number(&self, tenant: &TenantId, number: &PhoneNumberRecord) -> Result<(), StoreError>;
                async fn learn_display_number(&self, tenant: &TenantId, phone_number_id: &str, display: &str) -> Result<bool, StoreError>;
                async fn set_number_quality(&self, tenant: &TenantId, phone_number_id: &str, quality: Option<TemplateQuality>, throughput_per_sec: Option<u32>, meta_time: Option<i64>) -> Result<Option<PhoneNumberRecord>, StoreError>;
                async fn hold_phone_number(&self, tenant: &TenantId, phone_number_id: &str, hold: &NumberHold, signal_at: DateTime<Utc>) -> Result<bool, StoreError>;
                async fn resume_phone_number(&self, tenant: &TenantId, phone_number_id: &str, at: DateTime<Utc>) -> Result<Option<PhoneNumberRecord>, StoreError>;
            }
        }
    };
}

/// What [`pass_through!`] expands to, for one port: a trait private to the expansion whose
/// every method by default passes the call on to the wrapped store (or runs the body the
/// list gives it), implemented for the double with the methods it names, and the port
/// implemented by calling that trait's methods.
#[doc(hidden)]
#[macro_export]
macro_rules! __pass_through {
    (
        $port:ident for $double:ident via $field:tt;
        overrides { $($overrides:tt)* }
        methods {
            $(
                async fn $m:ident(&$self:ident $(, $a:ident: $t:ty)* $(,)?) -> $r:ty $({ $($default:tt)* })?;
            )*
        }
    ) => {
        const _: () = {
            // As in a hand-written impl of the port: its methods callable in the block.
            #[allow(unused_imports)]
            use $crate::doubles::__kirim::ports::$port as _;

            // The port's own signatures: as many arguments as it takes.
            #[allow(clippy::too_many_arguments)]
            mod __pass {
                // Only here: the double's own block resolves its names as its file does.
                #[allow(unused_imports)]
                use $crate::doubles::__types::*;

                #[$crate::doubles::__async_trait]
                pub(super) trait Overrides: Send + Sync {
                    fn pass_to(&self) -> &dyn $crate::doubles::__kirim::ports::$port;
                    $(
                        async fn $m(&$self $(, $a: $t)*) -> $r {
                            $crate::__pass_through!(@body $self $m ($($a),*) $({ $($default)* })?)
                        }
                    )*
                }

                #[$crate::doubles::__async_trait]
                impl $crate::doubles::__kirim::ports::$port for super::$double {
                    $(
                        async fn $m(&$self $(, $a: $t)*) -> $r {
                            <Self as Overrides>::$m($self $(, $a)*).await
                        }
                    )*
                }
            }

            #[$crate::doubles::__async_trait]
            impl __pass::Overrides for $double {
                fn pass_to(&self) -> &dyn $crate::doubles::__kirim::ports::$port {
                    &*self.$field
                }
                $($overrides)*
            }
        };
    };
    (@body $self:ident $m:ident ($($a:ident),*)) => {
        $self.pass_to().$m($($a),*).await
    };
    (@body $self:ident $m:ident ($($a:ident),*) { $($default:tt)* }) => {
        { $($default)* }
    };
}
