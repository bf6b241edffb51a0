//! Parsed domain types: once a value has one of these types it is valid.

mod allowlist;
mod idempotency;
mod ids;
mod message;
pub mod meta;
#[cfg(test)]
mod meta_props;
mod optout;
mod phone;
mod retention;
mod role;
mod status;

pub use allowlist::{AllowListError, IpAllowList, MAX_CIDRS};
pub use idempotency::{request_fingerprint, IdempotencyKey, IdempotencyKeyError};
pub use ids::{new_id, MessageId, TenantId};
pub use message::{
    Content, ErrorCode, MessageError, MessageRecord, StatusEvent, TemplateCategory, TemplateRef,
};
pub use optout::{
    keyword, Keyword, OptOut, OptOutScope, OptOutSource, BY_META, START_WORDS, STOP_WORDS,
};
pub use phone::{mask_phone, PhoneNumber, PhoneNumberError};
pub use retention::{parse_duration, RetentionClass, RetentionConfig};
pub use role::Role;
pub use status::{MessageStatus, StatusError};
