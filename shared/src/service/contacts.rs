//! What Kirim learns of a tenant's WhatsApp users from Meta's webhooks, besides opt-outs:
//! which phone goes with which business-scoped user id (so an opt-out under either key
//! blocks a send to the phone), and when a user last wrote to each of the tenant's numbers
//! (Meta's 24-hour customer-service window: a session text outside it is refused before
//! any debit, instead of paying a round trip for Meta's 131047). Never any content.

use chrono::{DateTime, Utc};

use crate::domain::{
    OptOutKey, PhoneNumber, RetentionClass, TenantId, UserId, CUSTOMER_SERVICE_WINDOW,
};

use super::errors::ServiceError;
use super::Deps;

/// The window as a chrono duration (24 hours).
fn window() -> chrono::Duration {
    chrono::Duration::from_std(CUSTOMER_SERVICE_WINDOW).unwrap_or(chrono::Duration::hours(24))
}

/// Records that `phone` and `user_id` name one user of `tenant` (Meta gave both).
pub async fn learn_pairing(
    deps: &Deps,
    tenant: &TenantId,
    phone: &PhoneNumber,
    user_id: &UserId,
) -> Result<(), ServiceError> {
    let now = deps.clock.now();
    let expires_at = deps
        .settings
        .retention
        .expiry(RetentionClass::Messages, now);
    deps.contacts
        .pair_user(tenant, phone, user_id, expires_at)
        .await?;
    Ok(())
}

/// The key and, for a phone WhatsApp knows by a second form (Mexico, Argentina,
/// Brazil: [`PhoneNumber::whatsapp_alias`]), that form's key.
pub fn phone_forms(key: &OptOutKey) -> impl Iterator<Item = OptOutKey> {
    let alias = match key {
        OptOutKey::Phone(p) => p.whatsapp_alias().map(OptOutKey::Phone),
        OptOutKey::User(_) => None,
    };
    std::iter::once(key.clone()).chain(alias)
}

/// The given keys and each phone's other WhatsApp form, deduplicated, in that order.
fn forms_of(given: &[OptOutKey]) -> Vec<OptOutKey> {
    let mut keys: Vec<OptOutKey> = Vec::new();
    for k in given.iter().flat_map(phone_forms) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// Adds `found` (a key paired with one of the user's) and, for a phone, its other
/// WhatsApp form, each unless already there: an opt-out or an opting back in kept under
/// the form Meta or an operator named (`52…`) is the user's as much as one under the form
/// the pairing was learnt in (`521…`). No read: the form is a rule on the digits.
fn push_with_forms(keys: &mut Vec<OptOutKey>, found: &OptOutKey) {
    for k in phone_forms(found) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
}

/// Every key a user is known by: the given ones, each phone's other WhatsApp form, and
/// for each of those the paired one Kirim learnt, with a paired phone's other form
/// (deduplicated, in that order).
pub async fn keys_of(
    deps: &Deps,
    tenant: &TenantId,
    given: &[OptOutKey],
) -> Result<Vec<OptOutKey>, ServiceError> {
    let mut keys = forms_of(given);
    let own = keys.clone();
    for k in &own {
        if let Some(other) = deps.contacts.paired_key(tenant, k).await? {
            push_with_forms(&mut keys, &other);
        }
    }
    Ok(keys)
}

/// Whether `a` and `b` name one key (a phone in either of its WhatsApp forms).
fn same_key(a: &OptOutKey, b: &OptOutKey) -> bool {
    phone_forms(a).any(|f| &f == b)
}

/// The key `key` is paired with now: its pairing, unless the other key's own pairing
/// names a third key and was written after it. Meta pairs a user id with one phone at a
/// time, so when the user's id was paired since with a new phone (or the phone with a new
/// id: a recycled number), the old pairing is stale — the user left that phone. A stale
/// pairing is forgotten (a conditional delete of `key`'s item alone, only while it is still
/// the older), so the phone stops answering for the user it no longer belongs to. Which
/// half is newer is told by their write times (`paired_at`; a half from before it was
/// recorded is the older): a half newer than the other is a pairing being written (its two
/// halves go one after the other), and is followed; a pairing whose other half is missing,
/// or with no time on either half, is taken as it stands.
pub async fn paired_now(
    deps: &Deps,
    tenant: &TenantId,
    key: &OptOutKey,
) -> Result<Option<OptOutKey>, ServiceError> {
    let Some((other, mine)) = deps.contacts.pairing(tenant, key).await? else {
        return Ok(None);
    };
    let theirs = deps.contacts.pairing(tenant, &other).await?;
    if let Some(newer) = stale_since(key, mine, theirs.as_ref()) {
        deps.contacts.unpair(tenant, key, &other, newer).await?;
        tracing::info!(key = %key.masked(), "a stale pairing forgotten");
        return Ok(None);
    }
    Ok(Some(other))
}

/// [`paired_now`] of a key in either of its WhatsApp forms: the form as given first, then,
/// if that has no pairing holding now, its other form (a pairing is learnt in the form
/// Meta's status or inbound named, `521…`, while a STOP, a 131050 of a message sent to the
/// dialled number or an operator's `PUT` may name `52…`). A phone with one form reads as
/// [`paired_now`] does; one with two reads the other form's `PAIR#` half (and its user's)
/// only when the given form has no pairing.
pub async fn paired_now_in_either_form(
    deps: &Deps,
    tenant: &TenantId,
    key: &OptOutKey,
) -> Result<Option<OptOutKey>, ServiceError> {
    for form in phone_forms(key) {
        if let Some(other) = paired_now(deps, tenant, &form).await? {
            return Ok(Some(other));
        }
    }
    Ok(None)
}

/// The write time of the other key's own half (`theirs`) when it makes `key`'s pairing
/// (its half written at `mine`) stale: it names a third key and was written after it
/// ([`paired_now`]'s rule). `None`: the pairing holds.
fn stale_since(
    key: &OptOutKey,
    mine: Option<i64>,
    theirs: Option<&(OptOutKey, Option<i64>)>,
) -> Option<i64> {
    match theirs {
        Some((back, Some(theirs))) if !same_key(key, back) && mine.is_none_or(|m| m < *theirs) => {
            Some(*theirs)
        }
        _ => None,
    }
}

/// [`keys_of`] for a removal (a `DELETE`, a START, a `resume`) and a look-up by key: only
/// pairings that hold now ([`paired_now`]), so lifting a recycled phone's block never lifts
/// its former owner's, who is known under the same user id at another phone since; and a
/// phone's two WhatsApp forms count as one person's only while they are not paired now with
/// two different users (a recycled line's other form may be another person's: neither's
/// removal reaches the other's block). (A send's check follows every pairing it finds:
/// the safe side.)
pub async fn keys_paired_now(
    deps: &Deps,
    tenant: &TenantId,
    given: &[OptOutKey],
) -> Result<Vec<OptOutKey>, ServiceError> {
    let mut keys: Vec<OptOutKey> = Vec::new();
    let push = |keys: &mut Vec<OptOutKey>, k: OptOutKey| {
        if !keys.contains(&k) {
            keys.push(k);
        }
    };
    for g in given {
        match g {
            OptOutKey::Phone(_) => {
                let (forms, owner) = one_persons_forms(deps, tenant, g, None).await?;
                for f in forms {
                    push(&mut keys, f);
                }
                if let Some(u) = owner {
                    push(&mut keys, u);
                }
            }
            OptOutKey::User(_) => {
                push(&mut keys, g.clone());
                if let Some(phone) = paired_now(deps, tenant, g).await? {
                    let (forms, _) = one_persons_forms(deps, tenant, &phone, Some(g)).await?;
                    for f in forms {
                        push(&mut keys, f);
                    }
                }
            }
        }
    }
    Ok(keys)
}

/// `phone` and, for a Mexican, Argentine or Brazilian mobile, its other WhatsApp form
/// unless that form is paired now with another user than `phone`'s (or than `user`, when
/// the phone was reached through that user id); and the user id of either, as paired now.
/// One more pairing read for such a mobile.
async fn one_persons_forms(
    deps: &Deps,
    tenant: &TenantId,
    phone: &OptOutKey,
    user: Option<&OptOutKey>,
) -> Result<(Vec<OptOutKey>, Option<OptOutKey>), ServiceError> {
    let owner = match user {
        Some(u) => Some(u.clone()),
        None => paired_now(deps, tenant, phone).await?,
    };
    let mut forms = vec![phone.clone()];
    let mut found = if user.is_some() { None } else { owner.clone() };
    for alt in phone_forms(phone).skip(1) {
        let alt_owner = paired_now(deps, tenant, &alt).await?;
        match (&owner, &alt_owner) {
            // Another person's form of the line: not this one's to lift or read.
            (Some(a), Some(b)) if !same_key(a, b) => {}
            _ => {
                forms.push(alt);
                if found.is_none() && user.is_none() {
                    found = alt_owner;
                }
            }
        }
    }
    Ok((forms, found))
}

/// The user (by each key Meta gave) wrote to the tenant's number `phone_number_id` at
/// Meta's `timestamp` (never later than now; now if Meta gave none). A time already
/// outside the window is not recorded.
pub async fn user_wrote(
    deps: &Deps,
    tenant: &TenantId,
    phone_number_id: &str,
    keys: &[OptOutKey],
    timestamp: Option<i64>,
) -> Result<bool, ServiceError> {
    let now = deps.clock.now();
    let at = timestamp
        .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
        .map_or(now, |t| t.min(now));
    let Some(expires) = at.checked_add_signed(window()) else {
        return Ok(false);
    };
    if expires <= now || keys.is_empty() {
        return Ok(false);
    }
    for key in keys {
        deps.contacts
            .record_inbound(tenant, phone_number_id, key, at, expires.timestamp())
            .await?;
    }
    Ok(true)
}

/// `422 outside_customer_service_window` unless `to` (or the user id it is paired with
/// now) wrote to the tenant's number `phone_number_id` less than 24 hours before the text
/// goes out (now, or its `send_at`). The expiry is checked here too: DynamoDB deletes
/// expired items lazily.
pub async fn check_window(
    deps: &Deps,
    tenant: &TenantId,
    phone_number_id: &str,
    to: &PhoneNumber,
    send_at: Option<DateTime<Utc>>,
) -> Result<(), ServiceError> {
    // Open when it goes out: now, or at a scheduled send's `send_at`.
    let when = send_at.unwrap_or_else(|| deps.clock.now());
    let open = |at: DateTime<Utc>| {
        at.checked_add_signed(window())
            .is_some_and(|end| when < end)
    };
    // The number as given, then its other WhatsApp form (Meta records an inbound under
    // the `wa_id`, `521…` for a Mexican mobile dialled as `52…`), each with its user id.
    for phone in phone_forms(&OptOutKey::Phone(to.clone())) {
        if let Some(at) = deps
            .contacts
            .last_inbound(tenant, phone_number_id, &phone)
            .await?
        {
            if open(at) {
                return Ok(());
            }
        }
        // The user id's window counts only while the pairing holds now: a user who moved
        // to a new phone (their id paired with it since) and writes from it opens no window
        // for the phone they left, whoever has it now (Meta would answer 131047, and the
        // text is charged). The id's own half is read only when its window is open, the
        // one case it decides: one more `GetItem` on those sends alone, none on a text
        // the phone's own window lets through or one refused anyway. Read-only: a send
        // forgets no pairing (a START, `resume` or `DELETE` does).
        if let Some((user, mine)) = deps.contacts.pairing(tenant, &phone).await? {
            if let Some(at) = deps
                .contacts
                .last_inbound(tenant, phone_number_id, &user)
                .await?
            {
                if open(at) {
                    let theirs = deps.contacts.pairing(tenant, &user).await?;
                    if stale_since(&phone, mine, theirs.as_ref()).is_none() {
                        return Ok(());
                    }
                }
            }
        }
    }
    Err(ServiceError::OutsideCustomerServiceWindow)
}
