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
//! `#[async_trait] impl`; every method it leaves out is passed on to the field `inner`
//! (`impl MessageStore for Slow via tenants { … }` names another field, `via 0` a tuple
//! struct's), which derefs to the port (`Arc<dyn MessageStore>` or an adapter).
//!
//! A method the port itself gives a default body (e.g. `MessageStore::peek_message`,
//! `TenantStore::tenant_for_access`) is the exception where the list below says so: there
//! the double keeps the port's default, through its own methods (a double that fails
//! `get_tenant` fails `tenant_for_access` too), as a hand-written double that leaves the
//! method out does.
//!
//! When a port gains a method, add it to that port's list in [`pass_through!`] (one
//! line): no double changes. A port is covered by an arm of its own; a port with no arm
//! yet gets one the same way (its methods' signatures, copied from the trait).

#[doc(hidden)]
pub use {async_trait::async_trait as __async_trait, kirim as __kirim};

/// The names the ports' signatures use, for the lists in [`pass_through!`].
#[doc(hidden)]
pub mod __types {
    pub use chrono::{DateTime, Utc};
    pub use kirim::domain::{
        MessageError, MessageId, MessageRecord, MessageStatus, RequestLimits, StatusEvent, TenantId,
    };
    pub use kirim::ports::{
        ApiKeyRecord, LedgerEntry, MessagePage, MessageQuery, PricedMessage, StatusChange, Tenant,
        TenantStatus, Transition,
    };
    pub use kirim::store_error::StoreError;
    pub use std::sync::Arc;
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
