//! Opt-outs: the API's use cases, the check before a send (and again before dispatch),
//! and what Meta's webhooks tell us (STOP/START replies, error 131050).
//! Inbound text is only compared, never stored nor logged.

use serde::Deserialize;

use crate::domain::{
    MessageId, OptOut, OptOutScope, OptOutSource, PhoneNumber, TemplateCategory, TenantId, BY_META,
};
use crate::ports::OptOutPage;

use super::errors::ServiceError;
use super::Deps;

/// Replies that opt the sender out (compared trimmed and case-folded, as the whole text).
pub const STOP_WORDS: [&str; 7] = [
    "stop",
    "stopall",
    "unsubscribe",
    "cancel",
    "end",
    "quit",
    "berhenti",
];
/// Replies that opt the sender back in.
pub const START_WORDS: [&str; 2] = ["start", "mula"];

/// What an inbound reply asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    Stop,
    Start,
}

/// The keyword a whole reply is, if any. "Please stop" is not one.
pub fn keyword(text: &str) -> Option<Keyword> {
    let folded = text.trim().to_lowercase();
    if STOP_WORDS.contains(&folded.as_str()) {
        Some(Keyword::Stop)
    } else if START_WORDS.contains(&folded.as_str()) {
        Some(Keyword::Start)
    } else {
        None
    }
}

/// `422 recipient_opted_out` if `to` has opted out of this kind of message
/// (`category` `None`: a session text).
pub async fn check(
    deps: &Deps,
    tenant: &TenantId,
    to: &PhoneNumber,
    category: Option<TemplateCategory>,
) -> Result<(), ServiceError> {
    match deps.opt_outs.get_opt_out(tenant, to).await? {
        Some(o) if o.scope.blocks(category) => Err(ServiceError::RecipientOptedOut),
        _ => Ok(()),
    }
}

/// Parses a `{phone}` path segment (already percent-decoded): E.164 with `+`.
pub fn parse_phone(raw: &str) -> Result<PhoneNumber, ServiceError> {
    PhoneNumber::parse(raw).map_err(|_| ServiceError::InvalidPhoneNumber)
}

pub async fn add(
    deps: &Deps,
    tenant: &TenantId,
    phone: PhoneNumber,
    scope: OptOutScope,
    source: OptOutSource,
    by: &str,
) -> Result<OptOut, ServiceError> {
    let opt_out = OptOut {
        tenant_id: tenant.clone(),
        phone,
        scope,
        source,
        created_by: by.to_owned(),
        created_at: deps.clock.now(),
    };
    let (stored, was_new) = deps.opt_outs.put_opt_out(&opt_out).await?;
    // A recipient's own new opt-out counts against the tenant's quality (once: Meta
    // retries webhooks, and a second STOP changes nothing).
    if was_new && by == BY_META {
        super::quality::count(deps, tenant, crate::ports::QualityCounter::OptOut).await;
    }
    tracing::info!(
        tenant_id = %tenant,
        to = %stored.phone.masked(),
        scope = stored.scope.as_str(),
        source = ?source,
        "opt-out recorded"
    );
    Ok(stored)
}

pub async fn get(
    deps: &Deps,
    tenant: &TenantId,
    phone: &PhoneNumber,
) -> Result<OptOut, ServiceError> {
    deps.opt_outs
        .get_opt_out(tenant, phone)
        .await?
        .ok_or(ServiceError::NotFound)
}

pub async fn remove(
    deps: &Deps,
    tenant: &TenantId,
    phone: &PhoneNumber,
) -> Result<(), ServiceError> {
    if deps.opt_outs.delete_opt_out(tenant, phone).await? {
        tracing::info!(tenant_id = %tenant, to = %phone.masked(), "opt-out removed");
        Ok(())
    } else {
        Err(ServiceError::NotFound)
    }
}

pub async fn list(
    deps: &Deps,
    tenant: &TenantId,
    limit: usize,
    cursor: Option<&str>,
) -> Result<OptOutPage, ServiceError> {
    Ok(deps.opt_outs.list_opt_outs(tenant, limit, cursor).await?)
}

// Meta's inbound message, leniently: only the fields we compare.
#[derive(Deserialize)]
struct InboundIn {
    from: String,
    #[serde(default)]
    text: Option<TextIn>,
    #[serde(default)]
    button: Option<ButtonIn>,
    #[serde(default)]
    interactive: Option<InteractiveIn>,
}

#[derive(Deserialize)]
struct TextIn {
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
struct ButtonIn {
    #[serde(default)]
    payload: Option<String>,
}

#[derive(Deserialize)]
struct InteractiveIn {
    #[serde(default)]
    button_reply: Option<ButtonReplyIn>,
}

#[derive(Deserialize)]
struct ButtonReplyIn {
    #[serde(default)]
    id: Option<String>,
}

/// What one inbound message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    OptedOut,
    OptedIn,
    /// Not a keyword, not ours, or nothing to remove.
    Nothing,
}

/// Applies one inbound message of a verified webhook for the tenant owning the number.
pub async fn apply_inbound(
    deps: &Deps,
    tenant: Option<&TenantId>,
    raw: &serde_json::Value,
) -> Result<Inbound, ServiceError> {
    let Ok(msg) = InboundIn::deserialize(raw) else {
        return Ok(Inbound::Nothing);
    };
    let found = if let Some(t) = &msg.text {
        keyword(&t.body).map(|k| (k, OptOutSource::Keyword))
    } else if let Some(p) = msg.button.as_ref().and_then(|b| b.payload.as_deref()) {
        keyword(p).map(|k| (k, OptOutSource::Button))
    } else if let Some(id) = msg
        .interactive
        .as_ref()
        .and_then(|i| i.button_reply.as_ref())
        .and_then(|b| b.id.as_deref())
    {
        keyword(id).map(|k| (k, OptOutSource::Button))
    } else {
        None
    };
    let (Some((word, source)), Some(tenant)) = (found, tenant) else {
        return Ok(Inbound::Nothing);
    };
    let Ok(phone) = PhoneNumber::parse(&format!("+{}", msg.from)) else {
        return Ok(Inbound::Nothing);
    };
    match word {
        Keyword::Stop => {
            add(deps, tenant, phone, OptOutScope::All, source, BY_META).await?;
            Ok(Inbound::OptedOut)
        }
        Keyword::Start => {
            if deps.opt_outs.delete_opt_out(tenant, &phone).await? {
                tracing::info!(tenant_id = %tenant, to = %phone.masked(), "opted back in");
                Ok(Inbound::OptedIn)
            } else {
                Ok(Inbound::Nothing)
            }
        }
    }
}

/// Meta's 131050 on a status of `message`: its recipient stopped marketing messages.
/// The recipient is the status's `recipient_id`, else the message's own. Never narrows
/// an `all` opt-out.
pub async fn marketing_stopped_for(
    deps: &Deps,
    tenant: &TenantId,
    message: &MessageId,
    status: &serde_json::Value,
) -> Result<(), ServiceError> {
    let from_status = status
        .get("recipient_id")
        .and_then(|v| v.as_str())
        .and_then(|d| PhoneNumber::parse(&format!("+{d}")).ok());
    let phone = match from_status {
        Some(p) => p,
        None => match deps.messages.get_message(tenant, message).await? {
            Some(m) => m.to,
            None => return Ok(()),
        },
    };
    add(
        deps,
        tenant,
        phone,
        OptOutScope::Marketing,
        OptOutSource::Meta131050,
        BY_META,
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_replies_of_stop_words_in_any_case_and_spacing_are_stop() {
        for w in [
            "STOP",
            "stop",
            " Stop \n",
            "STOPALL",
            "unsubscribe",
            "Cancel",
            "END",
            "quit",
            "Berhenti",
        ] {
            assert_eq!(keyword(w), Some(Keyword::Stop), "{w:?}");
        }
        assert_eq!(keyword("START"), Some(Keyword::Start));
        assert_eq!(keyword(" mula "), Some(Keyword::Start));
    }

    #[test]
    fn sentences_merely_containing_a_stop_word_are_not_keywords() {
        for w in [
            "please don't stop the deliveries",
            "stop it",
            "STOP!",
            "unstoppable",
            "",
            "the end",
        ] {
            assert_eq!(keyword(w), None, "{w:?}");
        }
    }
}
