//! A tenant's API keys: created (the secret shown once), listed (never the secret),
//! rotated with a grace period during which both keys work, revoked at once.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{new_id, Role, TenantId};
use crate::ports::{ApiKeyRecord, KeyCreator};
use crate::secret::{token_hash, Secret};

use super::caller::Caller;
use super::errors::ServiceError;
use super::Deps;

/// Prefix of every API key, so leaked keys are recognisable by secret scanners.
pub const KEY_PREFIX: &str = "kirim_";
/// Rotation grace: 24 hours unless asked otherwise; at most a week.
pub const DEFAULT_GRACE_HOURS: i64 = 24;
pub const MAX_GRACE_HOURS: i64 = 168;
pub const MAX_EXPIRY_DAYS: i64 = 3650;
/// A tenant's live keys at most (revoked and expired ones do not count).
pub const MAX_LIVE_KEYS: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null_integer")]
    pub expires_in_days: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    #[serde(default, deserialize_with = "crate::domain::fields::non_null_integer")]
    pub grace_period_hours: Option<i64>,
}

/// What is shown of a key: never the secret or its hash.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// `active`, `expiring` (rotated, working until `expires_at`), `expired` or `revoked`.
    pub status: &'static str,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<String>,
    /// Who made it (`null` for a key made before this was recorded).
    pub created_by: Option<KeyCreator>,
}

impl KeyView {
    pub fn of(k: &ApiKeyRecord, now: DateTime<Utc>) -> Self {
        let status = if k.revoked {
            "revoked"
        } else if !k.usable_at(now) {
            "expired"
        } else if k.replaced_by.is_some() {
            "expiring"
        } else {
            "active"
        };
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role,
            status,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            replaced_by: k.replaced_by.clone(),
            created_by: k.created_by.clone(),
        }
    }
}

/// A key just made: the record and the secret, which is shown this once.
pub struct Minted {
    pub record: ApiKeyRecord,
    pub key: Secret,
}

fn mint(
    tenant: &TenantId,
    name: String,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    by: KeyCreator,
) -> Minted {
    let key = Secret::generate(KEY_PREFIX);
    let record = ApiKeyRecord {
        id: new_id(),
        tenant_id: tenant.clone(),
        name,
        role,
        key_hash: token_hash(key.expose()),
        created_at: now,
        expires_at,
        revoked: false,
        revoked_at: None,
        replaced_by: None,
        created_by: Some(by),
    };
    Minted { record, key }
}

/// Who `caller` is as the maker of a key it creates or rotates into being: as the audit
/// names it ([`Caller::actor`]), and a console user with their email as it is now, read
/// once (not found or unreadable: the key is made all the same, named by the id). The
/// operator is [`KeyCreator::operator`], as on the keys it makes for a tenant.
pub async fn creator(deps: &Deps, tenant: &TenantId, caller: &Caller) -> KeyCreator {
    let (kind, id) = caller.actor();
    let email = match caller {
        Caller::Session { user_id, .. } => deps
            .users
            .get_user(tenant, user_id)
            .await
            .ok()
            .flatten()
            .map(|u| u.email),
        Caller::ApiKey { .. } | Caller::Operator => None,
    };
    KeyCreator {
        kind: kind.into(),
        id,
        email,
    }
}

fn invalid(msg: impl Into<String>) -> ServiceError {
    ServiceError::InvalidRequest(msg.into())
}

/// A new key of the tenant's, made by `by` (the caller, as the audit names it).
pub async fn create(
    deps: &Deps,
    tenant: &TenantId,
    req: NewKey,
    by: KeyCreator,
) -> Result<Minted, ServiceError> {
    create_within(deps, tenant, req, true, by).await
}

/// [`create`]; `capped`: whether [`MAX_LIVE_KEYS`] applies.
async fn create_within(
    deps: &Deps,
    tenant: &TenantId,
    req: NewKey,
    capped: bool,
    by: KeyCreator,
) -> Result<Minted, ServiceError> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 || !crate::domain::text::plain_label(name) {
        return Err(invalid(
            "name must be 1 to 100 characters, without control or invisible formatting characters",
        ));
    }
    let now = deps.clock.now();
    let expires_at = match req.expires_in_days {
        None => None,
        Some(d) if (1..=MAX_EXPIRY_DAYS).contains(&d) => Some(now + Duration::days(d)),
        Some(_) => {
            return Err(invalid(format!(
                "expires_in_days must be 1 to {MAX_EXPIRY_DAYS}"
            )))
        }
    };
    let live = if capped {
        deps.api_keys
            .list_api_keys(tenant)
            .await?
            .iter()
            .filter(|k| k.usable_at(now))
            .count()
    } else {
        0
    };
    if live >= MAX_LIVE_KEYS {
        return Err(invalid(format!(
            "a tenant may hold at most {MAX_LIVE_KEYS} live keys; revoke one first"
        )));
    }
    let minted = mint(tenant, name.to_owned(), req.role, expires_at, now, by);
    deps.api_keys.put_api_key(&minted.record).await?;
    tracing::info!(key_id = %minted.record.id, role = minted.record.role.as_str(), "api key created");
    Ok(minted)
}

/// The platform operator's key for a tenant (`POST /v1/platform/tenants/{id}/api-keys`):
/// the way back in for a tenant that lost or revoked every admin credential. As
/// [`create`], for a tenant that exists and is not closed (`404`, `409`), except that an
/// `admin` key is minted even at [`MAX_LIVE_KEYS`]: only an admin revokes keys, so a tenant
/// at its cap whose admin key was lost (or whose console admin left) had no way back in.
pub async fn create_for_operator(
    deps: &Deps,
    tenant: &TenantId,
    req: NewKey,
) -> Result<Minted, ServiceError> {
    match deps.tenants.get_tenant(tenant).await? {
        None => Err(ServiceError::NotFound),
        Some(t) if t.status == crate::ports::TenantStatus::Closed => Err(ServiceError::Conflict(
            "the tenant is closed; a closed tenant takes no new key".into(),
        )),
        Some(_) => {
            let capped = req.role != Role::Admin;
            create_within(deps, tenant, req, capped, KeyCreator::operator()).await
        }
    }
}

/// `GET /v1/api-keys`: one page of the tenant's keys, newest first, and the cursor to go
/// on from (`None`: the last page). One read, however many keys the tenant has.
pub async fn list(
    deps: &Deps,
    tenant: &TenantId,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<KeyView>, Option<String>), ServiceError> {
    let now = deps.clock.now();
    let page = deps
        .api_keys
        .list_api_keys_page(tenant, limit, cursor)
        .await?;
    let views = page.keys.iter().map(|k| KeyView::of(k, now)).collect();
    Ok((views, page.next_cursor))
}

/// A new key with the old one's name and role; the old one keeps working until the
/// grace period ends (or its own earlier expiry). Answers the new key and the old view.
pub async fn rotate(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    req: Rotate,
    by: KeyCreator,
) -> Result<(Minted, KeyView), ServiceError> {
    let grace = req.grace_period_hours.unwrap_or(DEFAULT_GRACE_HOURS);
    if !(0..=MAX_GRACE_HOURS).contains(&grace) {
        return Err(invalid(format!(
            "grace_period_hours must be 0 to {MAX_GRACE_HOURS}"
        )));
    }
    let now = deps.clock.now();
    let old = deps
        .api_keys
        .get_api_key(tenant, id)
        .await?
        .filter(|k| k.usable_at(now))
        .ok_or(ServiceError::NotFound)?;
    let grace_end = now + Duration::hours(grace);
    let old_expires_at = old.expires_at.map_or(grace_end, |e| e.min(grace_end));
    // Made by the rotating caller, who is shown the new secret.
    let minted = mint(tenant, old.name.clone(), old.role, old.expires_at, now, by);
    deps.api_keys
        .rotate_api_key(tenant, id, &minted.record, old_expires_at)
        .await?;
    let mut ended = old;
    ended.expires_at = Some(old_expires_at);
    ended.replaced_by = Some(minted.record.id.clone());
    tracing::info!(key_id = %id, new_key_id = %minted.record.id, grace_hours = grace, "api key rotated");
    Ok((minted, KeyView::of(&ended, now)))
}

pub async fn revoke(deps: &Deps, tenant: &TenantId, id: &str) -> Result<(), ServiceError> {
    let now = deps.clock.now();
    deps.api_keys
        .revoke_api_key(tenant, id, now)
        .await?
        .ok_or(ServiceError::NotFound)?;
    tracing::info!(key_id = %id, "api key revoked");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Settings;
    use crate::ports::SystemClock;

    /// A key's maker is its caller as the audit names it; the operator as a caller is the
    /// same maker as on the keys the operator's route and the onboarding make.
    #[tokio::test]
    async fn a_keys_maker_is_its_caller_as_the_audit_names_it() {
        let deps = crate::wiring::memory_deps(Settings::default(), Arc::new(SystemClock)).unwrap();
        let tenant = TenantId::from_trusted("t_1");
        assert_eq!(
            creator(&deps, &tenant, &Caller::Operator).await,
            KeyCreator::operator()
        );
        let by_key = Caller::ApiKey {
            tenant_id: tenant.clone(),
            key_id: "k_1".into(),
            role: Role::Admin,
        };
        assert_eq!(
            creator(&deps, &tenant, &by_key).await,
            KeyCreator {
                kind: "api_key".into(),
                id: "k_1".into(),
                email: None,
            }
        );
    }
}
