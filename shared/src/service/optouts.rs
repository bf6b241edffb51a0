//! Opt-outs: the API's use cases, the check before a send (and again before dispatch),
//! and what Meta's webhooks tell us (STOP/START requests, error 131050). Inbound text
//! never reaches this module: `domain::meta` reduces it to a request.

use crate::domain::meta::InboundMessage;
pub use crate::domain::{keyword, Keyword, START_WORDS, STOP_WORDS};
use crate::domain::{
    MessageId, OptOut, OptOutScope, OptOutSource, PhoneNumber, TemplateCategory, TenantId, BY_META,
};
use crate::ports::OptOutPage;

use super::errors::ServiceError;
use super::Deps;

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

/// Records an opt-out (`meta_timestamp`: Meta's time of the STOP reply that asked for
/// it, if one did).
pub async fn add(
    deps: &Deps,
    tenant: &TenantId,
    phone: PhoneNumber,
    scope: OptOutScope,
    source: OptOutSource,
    by: &str,
    meta_timestamp: Option<i64>,
) -> Result<OptOut, ServiceError> {
    let opt_out = OptOut {
        tenant_id: tenant.clone(),
        phone,
        scope,
        source,
        created_by: by.to_owned(),
        created_at: deps.clock.now(),
        meta_timestamp,
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
        tracing::info!(to = %phone.masked(), "opt-out removed");
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

/// What one inbound message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    OptedOut,
    OptedIn,
    /// Not a keyword, not ours, or nothing to remove.
    Nothing,
}

/// Applies one inbound message of a verified webhook for the tenant owning the number,
/// in the order of Meta's timestamps: a START undoes only a STOP not newer than itself,
/// and a STOP never moves the newest STOP's time back (both conditional writes).
pub async fn apply_inbound(
    deps: &Deps,
    tenant: Option<&TenantId>,
    msg: &InboundMessage,
) -> Result<Inbound, ServiceError> {
    let (Some((word, source)), Some(tenant), Some(phone)) = (msg.request, tenant, &msg.from) else {
        return Ok(Inbound::Nothing);
    };
    let at = msg
        .timestamp
        .unwrap_or_else(|| deps.clock.now().timestamp());
    match word {
        Keyword::Stop => {
            add(
                deps,
                tenant,
                phone.clone(),
                OptOutScope::All,
                source,
                BY_META,
                Some(at),
            )
            .await?;
            Ok(Inbound::OptedOut)
        }
        Keyword::Start => {
            if deps
                .opt_outs
                .delete_opt_out_not_newer_than(tenant, phone, at)
                .await?
            {
                tracing::info!(to = %phone.masked(), "opted back in");
                Ok(Inbound::OptedIn)
            } else {
                Ok(Inbound::Nothing)
            }
        }
    }
}

/// Meta's 131050 on a status of `message`: its recipient stopped marketing messages.
/// The recipient is the status's own (`recipient`), else the message's. Never narrows
/// an `all` opt-out.
pub async fn marketing_stopped_for(
    deps: &Deps,
    tenant: &TenantId,
    message: &MessageId,
    recipient: Option<&PhoneNumber>,
) -> Result<(), ServiceError> {
    let phone = match recipient {
        Some(p) => p.clone(),
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
        None,
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
