//! Parsed domain types: once a value has one of these types it is valid.

mod allowlist;
pub mod error_text;
pub mod fields;
pub mod hints;
mod idempotency;
mod ids;
mod limits;
mod message;
pub mod meta;
#[cfg(test)]
mod meta_props;
pub mod number;
mod optout;
mod phone;
mod retention;
mod role;
pub mod signature;
mod status;
pub mod template;
pub mod text;

pub use allowlist::{AllowListError, IpAllowList, MAX_CIDRS};
pub use idempotency::{IdempotencyKey, IdempotencyKeyError};
pub use ids::{new_id, ulid_at, MessageId, TenantId, UlidText};
pub use limits::{LimitSettings, RequestLimits, MAX_BURST, MAX_REQUESTS_PER_SEC, TENANT_FACTOR};
pub use message::{
    CarriedSlot, Content, ErrorCode, MessageError, MessageRecord, Pricing, StatusEvent,
    TemplateCategory, TemplateRef,
};
pub use optout::{
    keyword, Keyword, OptOut, OptOutKey, OptOutScope, OptOutSource, OptedIn, UserId, BY_META,
    MAX_USER_ID, START_WORDS, STOP_WORDS,
};
pub use phone::{country_code_in_use, mask_phone, wamid_tail, PhoneNumber, PhoneNumberError};
pub(crate) use phone::{stored as stored_phone, stored_opt as stored_phone_opt};
pub use retention::{
    parse_duration, QueueShape, RetentionClass, RetentionConfig, BROADCAST_LIST_RETENTION,
    CALLBACK_FAILURE_RETENTION, CUSTOMER_SERVICE_WINDOW, DISPATCH_QUEUE, ENDED_KEY_RETENTION,
    LOGIN_FAILURES_RETENTION, LOST_FANOUT_MARGIN, OPTED_IN_RETENTION, SEND_SLOT_RETENTION,
    STATUS_CALLBACK_QUEUE, UNSENT_STALE_AFTER,
};
pub use role::Role;
pub use status::{MessageStatus, StatusError};
pub use template::{TemplateChange, TemplateQuality, TemplateStatus};
