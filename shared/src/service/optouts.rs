//! Opt-outs: the API's use cases, the check before a send (and again before dispatch),
//! and what Meta's webhooks tell us (STOP/START requests, `user_preferences`, error
//! 131050). Inbound text never reaches this module: `domain::meta` reduces it to a
//! request. A user is known by phone, by Meta's user id, or by both: an opt-out is stored
//! under one key (the phone when known) and found through either, by way of the pairings
//! `contacts` learnt.

use crate::domain::meta::{InboundMessage, Preference, UserPreference};
pub use crate::domain::{keyword, Keyword, START_WORDS, STOP_WORDS};
use crate::domain::{
    MessageId, OptOut, OptOutKey, OptOutScope, OptOutSource, PhoneNumber, TemplateCategory,
    TenantId, UserId, BY_META,
};
use crate::ports::OptOutPage;

use super::errors::ServiceError;
use super::Deps;

/// `422 recipient_opted_out` if `to`, its other WhatsApp form, or the user id Kirim knows
/// either by, has opted out of this kind of message (`category` `None`: a session text).
pub async fn check(
    deps: &Deps,
    tenant: &TenantId,
    to: &PhoneNumber,
    category: Option<TemplateCategory>,
) -> Result<(), ServiceError> {
    check_reading(deps, tenant, to, category, Read::Consistent).await
}

/// [`check`] again before a queued message is sent (the dispatcher), with reads that may
/// be a moment behind (half the read units on DynamoDB): the send API checked at
/// acceptance with consistent reads, which is what API.md promises; this second look
/// catches a STOP that came while the message waited, except one recorded within the
/// store's replication lag (typically under a second) of the send (README, "Opt-outs").
pub async fn check_queued(
    deps: &Deps,
    tenant: &TenantId,
    to: &PhoneNumber,
    category: Option<TemplateCategory>,
) -> Result<(), ServiceError> {
    check_reading(deps, tenant, to, category, Read::MayLag).await
}

#[derive(Clone, Copy)]
enum Read {
    Consistent,
    MayLag,
}

async fn check_reading(
    deps: &Deps,
    tenant: &TenantId,
    to: &PhoneNumber,
    category: Option<TemplateCategory>,
    read: Read,
) -> Result<(), ServiceError> {
    // The number as given, then its other WhatsApp form if it has one (Mexico, Argentina,
    // Brazil): a STOP arrives from the `wa_id`, which may be the other form.
    for phone in super::contacts::phone_forms(&OptOutKey::Phone(to.clone())) {
        check_key(deps, tenant, &phone, category, read).await?;
    }
    Ok(())
}

async fn check_key(
    deps: &Deps,
    tenant: &TenantId,
    phone: &OptOutKey,
    category: Option<TemplateCategory>,
    read: Read,
) -> Result<(), ServiceError> {
    // The phone's opt-out and its pairing are read together: one round trip to the store
    // instead of two on every send and every dispatch (BENCHMARKS.md "Round trips"). The
    // pairing is then read even when the phone alone refuses (rarely: refusals are few);
    // an opt-out found refuses even if the pairing's read failed, as before.
    let paired = async {
        match read {
            Read::Consistent => deps.contacts.paired_key(tenant, phone).await,
            Read::MayLag => deps.contacts.peek_paired_key(tenant, phone).await,
        }
    };
    let (phone_blocks, paired) = tokio::join!(blocks(deps, tenant, phone, category, read), paired);
    if phone_blocks?.is_some() {
        return Err(ServiceError::RecipientOptedOut);
    }
    if let Some(user) = paired? {
        if let Some(o) = blocks(deps, tenant, &user, category, read).await? {
            if Box::pin(opted_in_since(deps, tenant, phone, &user, &o)).await? {
                return Ok(());
            }
            if let OptOutKey::Phone(p) = phone {
                Box::pin(keep_under_phone(deps, o, p)).await;
            }
            return Err(ServiceError::RecipientOptedOut);
        }
    }
    Ok(())
}

/// Whether the user opted back in by `phone` (a START from it) after the opt-out `o` their
/// paired key `user` holds: the two were made before Kirim learnt that they are one user, so
/// the START removed nothing under the phone, and the STOP by the id stayed. The user's
/// last word stands: the id's opt-out is removed as that START would have removed it
/// (conditional on its time: a newer STOP is never removed), and the send goes. Read only
/// on a refusal through the pairing (rare): one consistent read of the phone's `OPTIN#`.
async fn opted_in_since(
    deps: &Deps,
    tenant: &TenantId,
    phone: &OptOutKey,
    user: &OptOutKey,
    o: &OptOut,
) -> Result<bool, ServiceError> {
    let Some(since) = deps.opt_outs.opted_in(tenant, phone).await? else {
        return Ok(false);
    };
    if !since.overrides(o) {
        return Ok(false);
    }
    match (since.all_at, o.meta_timestamp) {
        (Some(at), Some(ts)) if at > ts => {
            deps.opt_outs
                .delete_opt_out_not_newer_than(tenant, user, at)
                .await?;
        }
        _ => {
            if let Some(at) = since.marketing_at {
                deps.opt_outs
                    .delete_opt_out_of_scope(tenant, user, OptOutScope::Marketing, at)
                    .await?;
            }
        }
    }
    tracing::debug!(tenant_id = %tenant, "a START by the phone, newer than its paired id's opt-out, stands");
    Ok(true)
}

/// The opt-out a user id (opted out before Kirim knew its phone) has, copied under the
/// phone it is now paired with, so the block outlives the pairing (a refused user writes
/// no statuses to renew it). Only on a refusal, and only if a consistent read still finds
/// it (the dispatcher's reads may lag behind a `DELETE` the tenant just made). A failure
/// is logged; the next refusal tries again.
async fn keep_under_phone(deps: &Deps, by_user: OptOut, phone: &PhoneNumber) {
    let tenant = by_user.tenant_id.clone();
    let Some(u) = by_user.user_id.clone() else {
        return;
    };
    let by_user = match deps
        .opt_outs
        .get_opt_out(&tenant, &OptOutKey::User(u.clone()))
        .await
    {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(tenant_id = %tenant, error = %e, "a user id's opt-out not yet kept under its phone: the next refusal tries again");
            return;
        }
    };
    let of = OptOutKey::User(u);
    let o = OptOut {
        phone: Some(phone.clone()),
        ..by_user
    };
    // Only while the id's opt-out is still there: a `DELETE` since the read above wins.
    if let Err(e) = deps.opt_outs.put_opt_out_copy(&o, &of).await {
        tracing::warn!(tenant_id = %tenant, error = %e, "a user id's opt-out not yet kept under its phone: the next refusal tries again");
    }
}

/// The opt-out under `key` that blocks `category`, if any.
async fn blocks(
    deps: &Deps,
    tenant: &TenantId,
    key: &OptOutKey,
    category: Option<TemplateCategory>,
    read: Read,
) -> Result<Option<OptOut>, ServiceError> {
    let found = match read {
        Read::Consistent => deps.opt_outs.get_opt_out(tenant, key).await?,
        Read::MayLag => deps.opt_outs.peek_opt_out(tenant, key).await?,
    };
    Ok(found.filter(|o| o.scope.blocks(category)))
}

/// Parses a `{phone}` path segment (already percent-decoded): E.164 with `+`.
pub fn parse_phone(raw: &str) -> Result<PhoneNumber, ServiceError> {
    PhoneNumber::parse(raw).map_err(|_| ServiceError::InvalidPhoneNumber)
}

/// Parses a `{key}` path segment (already percent-decoded): a phone (E.164 with `+`) or
/// Meta's user id (`US.13491208655302741918`). A malformed user id (two letters and a
/// period, then something else) is `400 invalid_request`; anything else that is neither
/// is `400 invalid_phone_number`, as before user ids.
pub fn parse_key(raw: &str) -> Result<OptOutKey, ServiceError> {
    parse_key_with(raw, PhoneNumber::parse)
}

/// [`parse_key`] for reading or removing an opt-out that may already be kept: a phone
/// under [`PhoneNumber::parse_stored`]'s rules, so one added before a rule was tightened
/// (`+600…`, stop 52) can still be read and removed. Adding one keeps [`parse_key`].
pub fn parse_existing_key(raw: &str) -> Result<OptOutKey, ServiceError> {
    parse_key_with(raw, PhoneNumber::parse_stored)
}

fn parse_key_with(
    raw: &str,
    phone: fn(&str) -> Result<PhoneNumber, crate::domain::PhoneNumberError>,
) -> Result<OptOutKey, ServiceError> {
    let b = raw.as_bytes();
    let looks_like_user_id =
        b.len() >= 3 && b[..2].iter().all(u8::is_ascii_alphabetic) && b[2] == b'.';
    if !looks_like_user_id {
        return phone(raw)
            .map(OptOutKey::Phone)
            .map_err(|_| ServiceError::InvalidPhoneNumber);
    }
    OptOutKey::parse(raw).ok_or_else(|| {
        ServiceError::InvalidRequest(
            "an opt-out key is a phone number in E.164 (+60123456789) or a WhatsApp user id (US.13491208655302741918)"
                .into(),
        )
    })
}

/// Who an opt-out names: a phone, a user id, or both.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recipient {
    pub phone: Option<PhoneNumber>,
    pub user_id: Option<UserId>,
}

impl Recipient {
    pub fn of(key: OptOutKey) -> Self {
        match key {
            OptOutKey::Phone(p) => Recipient {
                phone: Some(p),
                user_id: None,
            },
            OptOutKey::User(u) => Recipient {
                phone: None,
                user_id: Some(u),
            },
        }
    }

    /// Its keys: the phone, then the user id.
    pub fn keys(&self) -> Vec<OptOutKey> {
        let mut keys = Vec::new();
        if let Some(p) = &self.phone {
            keys.push(OptOutKey::Phone(p.clone()));
        }
        if let Some(u) = &self.user_id {
            keys.push(OptOutKey::User(u.clone()));
        }
        keys
    }
}

/// The time an opt-out or an opting back in is ordered by: Meta's time of the user's
/// choice, never later than now (a clock ahead of ours, or a bad timestamp, would order a
/// START after every opt-out made for days: an operator's PUT answered 200 and stored
/// nothing, and the user's real STOPs were refused), else now.
fn choice_time(deps: &Deps, meta: Option<i64>) -> i64 {
    let now = deps.clock.now().timestamp();
    // More than 30 days old (`0`, a bad timestamp): no choice Meta still delivers, so now,
    // as a status's time is taken (`StatusReport::at`).
    meta.filter(|t| *t > now.saturating_sub(crate::domain::meta::OLDEST_META_TIME_SECS))
        .map_or(now, |t| t.min(now))
}

/// Records an opt-out (`meta_timestamp`: Meta's time of the STOP reply that asked for
/// it, if one did). It is stored under the phone when known, else the user id.
pub async fn add(
    deps: &Deps,
    tenant: &TenantId,
    who: Recipient,
    scope: OptOutScope,
    source: OptOutSource,
    by: &str,
    meta_timestamp: Option<i64>,
) -> Result<OptOut, ServiceError> {
    let now = deps.clock.now();
    // The user's other key as paired now, when Meta named one only: a START by it
    // (remembered under it) holds back an older STOP as one by the named key does. (A
    // START by the id alone, then the pairing learnt, then an older STOP by the phone
    // redelivered late: checked under the phone alone, it was stored, and the user's last
    // word, START, lost.) Only a pairing that holds now: a recycled number's former
    // owner's START never holds back the new owner's STOP. A phone's pairing in either of
    // its WhatsApp forms: the pairing was learnt in the form Meta named (`521…`), while a
    // 131050 of a message sent to the dialled number, or an operator's `PUT`, names `52…`.
    let paired_now = match (&who.phone, &who.user_id) {
        (Some(p), None) => {
            super::contacts::paired_now_in_either_form(deps, tenant, &OptOutKey::Phone(p.clone()))
                .await?
        }
        (None, Some(u)) => {
            super::contacts::paired_now(deps, tenant, &OptOutKey::User(u.clone())).await?
        }
        _ => None,
    };
    // A user known only by id whose phone Kirim has paired with it (as it holds now: one
    // read, and never a phone that passed to someone else since): stored under the id (it
    // follows the user to a new phone), and a copy under the phone, which blocks sends to
    // it for good (the pairing expires with the Messages class, and a refused user writes
    // no more statuses to renew it).
    let paired_phone = match (&who.phone, &paired_now) {
        (None, Some(OptOutKey::Phone(p))) => Some(p.clone()),
        _ => None,
    };
    let opt_out = OptOut {
        tenant_id: tenant.clone(),
        phone: who.phone,
        user_id: who.user_id,
        scope,
        source,
        created_by: by.to_owned(),
        created_at: now,
        // Every opt-out carries the time of the choice it records: Meta's, else now (an
        // API call's), so a START older than it never removes it.
        meta_timestamp: Some(choice_time(deps, meta_timestamp)),
    };
    let Some(key) = opt_out.key() else {
        return Err(ServiceError::InvalidRequest(
            "an opt-out needs a phone number or a user id".into(),
        ));
    };
    let (stored, was_new) = deps
        .opt_outs
        .put_opt_out_paired(&opt_out, paired_now.as_ref())
        .await?;
    // Meta named both (a STOP from a phone, with its user id): also kept under the id, so
    // it follows the user to a new phone Meta later pairs the id with (the phone's item
    // alone is found from the id only while the id is paired with this phone). Written
    // only while the phone's is stored, as the copy below.
    if let (Some(_), OptOutKey::Phone(_)) = (&stored.user_id, &key) {
        deps.opt_outs.put_opt_out_copy(&stored, &key).await?;
    }
    if let Some(p) = paired_phone {
        // The id's opt-out as stored (folded: a `marketing` stop never narrows an `all`),
        // while it is stored: a `DELETE` of it meanwhile is not undone under the phone.
        deps.opt_outs
            .put_opt_out_copy(
                &OptOut {
                    phone: Some(p),
                    ..stored.clone()
                },
                &key,
            )
            .await?;
    }
    // A recipient's own new opt-out counts against the tenant's quality (once: Meta
    // retries webhooks, and a second STOP changes nothing).
    if was_new && by == BY_META {
        super::quality::count(deps, tenant, crate::ports::QualityCounter::OptOut).await;
    }
    // A recipient's STOP (Meta's webhook) is routine, one of many in a body: DEBUG, as
    // the webhook's other per-item details (at most one INFO line a request).
    if by == BY_META {
        tracing::debug!(
            tenant_id = %tenant,
            to = %key.masked(),
            scope = stored.scope.as_str(),
            source = ?source,
            "opt-out recorded"
        );
    } else {
        tracing::info!(
            tenant_id = %tenant,
            to = %key.masked(),
            scope = stored.scope.as_str(),
            source = ?source,
            "opt-out recorded"
        );
    }
    Ok(stored)
}

/// The opt-out stored under `key`, else the one under the key it is paired with, and the
/// key it was found under.
pub async fn get(
    deps: &Deps,
    tenant: &TenantId,
    key: &OptOutKey,
) -> Result<(OptOut, OptOutKey), ServiceError> {
    // The keys a removal of `key` would reach (a `DELETE` of what a `GET` found removes it).
    for k in super::contacts::keys_paired_now(deps, tenant, std::slice::from_ref(key)).await? {
        if let Some(o) = deps.opt_outs.get_opt_out(tenant, &k).await? {
            return Ok((o, k));
        }
    }
    Err(ServiceError::NotFound)
}

/// How many keys one removal looks at, at most (a phone's forms, the user id paired with
/// them, and the phone that id is paired with).
const MAX_REMOVAL_KEYS: usize = 12;
const _: () = assert!(MAX_REMOVAL_KEYS <= crate::ports::MAX_OPT_OUTS_REMOVED);

/// Removes the opt-out under `key` and those under the keys it is paired with. Afterwards the user is reachable by
/// either. All in one atomic write: a copy is written only while its source exists
/// ([`OptOutStore::put_opt_out_copy`]), so one racing this removal (a STOP's copy from the
/// phone to the id, a refused send's from the id to the phone) lands before it and goes
/// with it, or is refused. (Deleted one by one, a copy landing between two deletes
/// survived, and brought the opt-out back.)
///
/// [`OptOutStore::put_opt_out_copy`]: crate::ports::OptOutStore::put_opt_out_copy
pub async fn remove(deps: &Deps, tenant: &TenantId, key: &OptOutKey) -> Result<(), ServiceError> {
    let mut keys =
        super::contacts::keys_paired_now(deps, tenant, std::slice::from_ref(key)).await?;
    // A user id's opt-out follows the user to the phone its id is paired with now (copied
    // there on a refused send): removed with it, whichever key the DELETE names. (A user
    // id the DELETE named was followed already.)
    let named: Vec<OptOutKey> = super::contacts::phone_forms(key).collect();
    for k in keys.clone() {
        if named.contains(&k) {
            continue;
        }
        if let OptOutKey::User(_) = &k {
            if let Some(p) = super::contacts::paired_now(deps, tenant, &k).await? {
                if !keys.contains(&p) {
                    keys.push(p);
                }
            }
        }
    }
    // Only keys paired now: an opt-out naming a key no longer paired with it (a recycled
    // number's former owner's user id, paired with another phone since; a pairing expired)
    // is left under that key, the safe side (README "Opt-outs"). Read consistently: none
    // at all → 404.
    keys.truncate(MAX_REMOVAL_KEYS);
    let mut found = false;
    for k in &keys {
        if deps.opt_outs.get_opt_out(tenant, k).await?.is_some() {
            found = true;
            break;
        }
    }
    if !found {
        return Err(ServiceError::NotFound);
    }
    deps.opt_outs.delete_opt_outs(tenant, &keys).await?;
    tracing::info!(to = %key.masked(), "opt-out removed");
    Ok(())
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
/// and a STOP never moves the newest STOP's time back (both conditional writes). A STOP
/// from a user known only by id opts out that id; with both, the opt-out records both.
pub async fn apply_inbound(
    deps: &Deps,
    tenant: Option<&TenantId>,
    msg: &InboundMessage,
) -> Result<Inbound, ServiceError> {
    let who = Recipient {
        phone: msg.from.clone(),
        user_id: msg.from_user_id.clone(),
    };
    let (Some((word, source)), Some(tenant)) = (msg.request, tenant) else {
        return Ok(Inbound::Nothing);
    };
    if who.keys().is_empty() {
        return Ok(Inbound::Nothing);
    }
    let at = choice_time(deps, msg.timestamp);
    match word {
        Keyword::Stop => {
            add(
                deps,
                tenant,
                who,
                OptOutScope::All,
                source,
                BY_META,
                Some(at),
            )
            .await?;
            Ok(Inbound::OptedOut)
        }
        Keyword::Start => {
            let mut removed = false;
            for k in super::contacts::keys_paired_now(deps, tenant, &who.keys()).await? {
                removed |= deps
                    .opt_outs
                    .delete_opt_out_not_newer_than(tenant, &k, at)
                    .await?;
            }
            if removed {
                tracing::debug!("opted back in");
                Ok(Inbound::OptedIn)
            } else {
                Ok(Inbound::Nothing)
            }
        }
    }
}

/// Applies a `user_preferences` item: `stop` of marketing messages adds a `marketing`
/// opt-out (never narrowing an `all` one); `resume` removes a `marketing` opt-out under
/// any of the user's keys, never an `all` one (a conditional delete).
pub async fn apply_preference(
    deps: &Deps,
    tenant: Option<&TenantId>,
    pref: &UserPreference,
) -> Result<Inbound, ServiceError> {
    let who = Recipient {
        phone: pref.phone.clone(),
        user_id: pref.user_id.clone(),
    };
    let Some(tenant) = tenant else {
        return Ok(Inbound::Nothing);
    };
    match pref.preference {
        Preference::StopMarketing => {
            add(
                deps,
                tenant,
                who,
                OptOutScope::Marketing,
                OptOutSource::MetaUserPreferences,
                BY_META,
                pref.timestamp,
            )
            .await?;
            Ok(Inbound::OptedOut)
        }
        Preference::ResumeMarketing => {
            // In Meta's time order across deliveries too: a redelivered older `resume`
            // never removes a newer `stop`.
            let at = choice_time(deps, pref.timestamp);
            let mut removed = false;
            for k in super::contacts::keys_paired_now(deps, tenant, &who.keys()).await? {
                removed |= deps
                    .opt_outs
                    .delete_opt_out_of_scope(tenant, &k, OptOutScope::Marketing, at)
                    .await?;
            }
            Ok(if removed {
                Inbound::OptedIn
            } else {
                Inbound::Nothing
            })
        }
    }
}

/// Meta's 131050 on a status of `message` (of Meta's time `at`, if it gave one; else
/// now): its recipient stopped marketing messages. The recipient is the status's own
/// (`recipient`), else the message's. Never narrows an `all` opt-out.
pub async fn marketing_stopped_for(
    deps: &Deps,
    tenant: &TenantId,
    message: &MessageId,
    recipient: Option<&PhoneNumber>,
    at: Option<i64>,
) -> Result<(), ServiceError> {
    // A closed tenant takes no new opt-out (the close-out gives its items their last TTL).
    if !deps.tenant_is_open(tenant).await? {
        return Ok(());
    }
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
        Recipient::of(OptOutKey::Phone(phone)),
        OptOutScope::Marketing,
        OptOutSource::Meta131050,
        BY_META,
        at,
    )
    .await
    .map(|_| ())
    .or_else(|e| match e {
        // Closed since the look above (a warm cache's 5 s): no opt-out, as above; the
        // status that carried the 131050 still applies (a dispatcher applying kept
        // statuses would otherwise drop them).
        ServiceError::Conflict(m) if m == crate::ports::TENANT_CLOSED => Ok(()),
        e => Err(e),
    })
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
