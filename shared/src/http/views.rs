//! Response shapes. They decide exactly what leaves the system (never content, secrets
//! or internal ids such as secret names).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{
    ErrorCode, MessageError, MessageRecord, MessageStatus, StatusEvent, TemplateRef,
};
use crate::ports::{Tenant, TenantStatus};

pub use crate::service::accounts::TenantView;

pub use crate::service::quality::Quality;

#[derive(Serialize)]
pub struct AccountView {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub credits: i64,
    pub phone_number_id: String,
    pub quality: Quality,
}

impl AccountView {
    pub fn new(t: &Tenant, quality: Quality) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            status: t.status.clone(),
            credits: t.credits,
            phone_number_id: t.phone_number_id.clone(),
            quality,
        }
    }
}

/// A failure as the API shows it: the code, Meta's (or Kirim's) title, and a hint for a
/// person (`domain::hints`).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ErrorView {
    pub code: ErrorCode,
    pub title: String,
    pub hint: String,
}

impl From<&MessageError> for ErrorView {
    fn from(e: &MessageError) -> Self {
        Self {
            code: e.code.clone(),
            title: e.title.clone(),
            hint: crate::domain::hints::hint(&e.code),
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MessageView {
    pub id: String,
    pub to: String,
    pub template: Option<TemplateRef>,
    pub status: MessageStatus,
    pub error: Option<ErrorView>,
    pub events: Vec<StatusEvent>,
    pub wamid: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub client_reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    /// The tenant's phone number it goes from (`null`: accepted before a tenant could
    /// have several; it went from the default number).
    pub from: Option<String>,
    /// Meta's pricing of it, once a status webhook carried one.
    pub pricing: Option<crate::domain::Pricing>,
}

impl From<&MessageRecord> for MessageView {
    fn from(m: &MessageRecord) -> Self {
        Self {
            id: m.id.to_string(),
            to: m.to.to_string(),
            template: m.template.clone(),
            status: m.status,
            error: m.error.as_ref().map(ErrorView::from),
            // A delivered message Meta's `sent` never reached lists one all the same.
            events: m.shown_events().into_owned(),
            wamid: m.wamid.clone(),
            created_at: m.created_at,
            updated_at: m.updated_at,
            client_reference: m.client_reference.clone(),
            broadcast_id: m.broadcast_id.clone(),
            from: m.from.clone(),
            pricing: m.pricing.clone(),
        }
    }
}
