//! `UserStore` on the one table (docs/data-model.md, "Users and sessions"):
//! `TENANT#{t}`/`USER#{id}` the user, `EMAIL#{email}`/`EMAIL` its global email claim
//! (written in the same transaction), `SESSION#{token hash}`/`SESSION` a session with its
//! expiry as TTL, `TENANT#{t}`/`SETTINGS#2FA` the tenant's 2FA requirement.
//! The TOTP step is a conditional update. Failed-login counters (`LOGINFAIL#{sha256(email)}`
//! / `ADDR#{address}` and `LOGINADDR#{address}` / `FAIL`, with `failures`,
//! `blocked_until` and a `ttl` a day after the last failure) change only by conditional
//! updates and atomic `ADD`s: never read, then written. A `blocked_until` further ahead
//! than `LoginPolicy::furthest_block`, or a `ttl` further ahead than
//! `LoginPolicy::furthest_window_end` (a clock ahead wrote either), counts as lapsed in
//! those conditions.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};

use super::classify;
use super::dynamodb::{from_item, keys, n, s, to_item, CancelReason, DynamoStore, Item, TTL_ATTR};
use crate::domain::{Role, TenantId};
use crate::ports::{
    LoginCounter, LoginGate, LoginPolicy, LoginTicket, SessionRecord, UserPage, UserRecord,
    UserStore,
};
use crate::store_error::StoreError;

fn counter_key(counter: &LoginCounter) -> keys::Key {
    match counter {
        LoginCounter::EmailAtAddress { email_hash, addr } => {
            keys::login_failures_of_email(email_hash, addr)
        }
        LoginCounter::Address(addr) => keys::login_failures_of_address(addr),
        LoginCounter::Totp(email_hash) => keys::login_totp_failures(email_hash),
    }
}

fn number_of(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// The item a refused conditional update found (`ReturnValuesOnConditionCheckFailure`
/// `ALL_OLD`); `None` when there was none.
fn refused_item(e: &UpdateItemError) -> Option<&Item> {
    match e {
        UpdateItemError::ConditionalCheckFailedException(c) => c.item(),
        _ => None,
    }
}

/// A string attribute of an item.
fn string_of<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

impl DynamoStore {
    /// One conditional update of a failed-login counter (`#ttl` names the TTL
    /// attribute); the new values when it applied, `None` when the condition failed.
    async fn update_counter(
        &self,
        counter: &LoginCounter,
        expr: &str,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<Option<Item>, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(counter_key(counter).attrs()))
            .update_expression(expr)
            .condition_expression(condition)
            .return_values(ReturnValue::AllNew);
        if expr.contains("#ttl") || condition.contains("#ttl") {
            req = req.expression_attribute_names("#ttl", TTL_ATTR);
        }
        for (k, v) in values {
            if expr.contains(k) || condition.contains(k) {
                req = req.expression_attribute_values(*k, v.clone());
            }
        }
        match req.send().await {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(None)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    /// One conditional update of a user item; `Ok(false)` when the condition fails.
    async fn update_user(
        &self,
        tenant: &TenantId,
        id: &str,
        expr: &str,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<bool, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::user(tenant, id).attrs()))
            .update_expression(expr)
            .condition_expression(condition);
        for (k, v) in values {
            req = req.expression_attribute_values(*k, v.clone());
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(false)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    fn delete_item(
        &self,
        key: keys::Key,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<TransactWriteItem, StoreError> {
        let mut d = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key.attrs()))
            .condition_expression(condition);
        for (k, v) in values {
            d = d.expression_attribute_values(*k, v.clone());
        }
        let d = d
            .build()
            .map_err(|e| StoreError::Corrupt(format!("delete: {e}")))?;
        Ok(TransactWriteItem::builder().delete(d).build())
    }
}

/// A tenant id no tenant has (not a ULID), for [`UserStore::user_by_email`]'s stand-in read.
const NO_TENANT: &str = "-";

#[async_trait]
impl UserStore for DynamoStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let item = to_item(user, &keys::user(&user.tenant_id, &user.id).pairs(), None)?;
        let mut claim: Item = keys::email_claim(&user.email).attrs();
        claim.insert("tenant_id".into(), s(user.tenant_id.to_string()));
        claim.insert("user_id".into(), s(user.id.clone()));
        let items = vec![
            self.tenant_open_check(&user.tenant_id)?,
            self.put(item, Some("attribute_not_exists(pk)"))?,
            self.put(claim, Some("attribute_not_exists(pk)"))?,
        ];
        // The tenant-open check names the tenant item, which every send's debit holds
        // in its transaction: a conflict with one wrote nothing, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(e) if Self::refused_as_closed(&e) => Err(Self::tenant_closed()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => {
                Err(StoreError::Conflict("a user with this email exists".into()))
            }
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn get_user(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.get(keys::user(tenant, id))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let Some(claim) = self.get(keys::email_claim(email)).await? else {
            // The same two consistent reads, one after the other, as for a user's email:
            // a login's answer time must not tell whether an email has a user (an unknown
            // email is answered exactly as a wrong password). A key no item has.
            let _ = self
                .get(keys::user(&TenantId::from_trusted(NO_TENANT), "-"))
                .await?;
            return Ok(None);
        };
        let field = |k: &str| claim.get(k).and_then(|v| v.as_s().ok()).cloned();
        match (field("tenant_id"), field("user_id")) {
            (Some(t), Some(id)) => self.get_user(&TenantId::from_trusted(t), &id).await,
            _ => Err(StoreError::Corrupt("email claim item".into())),
        }
    }

    async fn list_users(&self, tenant: &TenantId) -> Result<Vec<UserRecord>, StoreError> {
        let mut out: Vec<UserRecord> = self
            .query_prefix(keys::tenant_pk(tenant), keys::USER_PREFIX)
            .await?;
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn list_users_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UserPage, StoreError> {
        let (users, next_cursor) = self
            .query_tenant_page(
                tenant,
                keys::USER_PREFIX,
                crate::ports::Order::OldestFirst,
                limit,
                cursor,
            )
            .await?;
        Ok(UserPage { users, next_cursor })
    }

    async fn delete_user(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let Some(user) = self.get_user(tenant, id).await? else {
            return Ok(false);
        };
        let items = vec![
            self.delete_item(keys::user(tenant, id), "attribute_exists(pk)", &[])?,
            self.delete_item(
                keys::email_claim(&user.email),
                "user_id = :id",
                &[(":id", s(id))],
            )?,
        ];
        match self.transact(items).await {
            Ok(()) => Ok(true),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => Ok(false),
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn set_user_role(
        &self,
        tenant: &TenantId,
        id: &str,
        role: Role,
    ) -> Result<Option<Role>, StoreError> {
        // `role` is one of DynamoDB's reserved words. The change names itself
        // (`role_write_id`, fresh for each call) and keeps the role it replaced
        // (`previous_role`): the SDK's retry of a try that landed and whose answer was lost
        // is refused by its own write, and answers the role that write replaced, not the
        // role it set. One write, as before.
        let write_id = crate::domain::new_id();
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::user(tenant, id).attrs()))
            .update_expression("SET #role = :role, previous_role = #role, role_write_id = :w")
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(role_write_id) \
                 OR role_write_id <> :w)",
            )
            .expression_attribute_names("#role", "role")
            .expression_attribute_values(":role", s(role.as_str()))
            .expression_attribute_values(":w", s(write_id.clone()))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => {
                let old: UserRecord = from_item(out.attributes.unwrap_or_default())?;
                Ok(Some(old.role))
            }
            // No such user — or this call's own change, landed on a try whose answer was
            // lost: the role it replaced.
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let Some(item) = refused_item(e.err()) else {
                    return Ok(None);
                };
                if string_of(item, "role_write_id") != Some(write_id.as_str()) {
                    return Ok(None);
                }
                string_of(item, "previous_role")
                    .and_then(Role::parse)
                    .map(Some)
                    .ok_or_else(|| StoreError::Corrupt("user item: previous_role".into()))
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn set_password(
        &self,
        tenant: &TenantId,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::user(tenant, id).attrs()))
            .update_expression(
                "SET password_hash = :new, \
                 password_version = if_not_exists(password_version, :zero) + :one",
            )
            .condition_expression("attribute_exists(pk) AND password_hash = :old")
            .expression_attribute_values(":new", s(new))
            .expression_attribute_values(":old", s(old))
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            // Changed meanwhile (or gone) — unless the hash there is this call's `new`
            // (salted: no other change writes it), landed on a try whose answer was lost
            // and refused on the SDK's retry by itself: applied, `password_version` moved
            // on once.
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(refused_item(e.err())
                    .is_some_and(|item| string_of(item, "password_hash") == Some(new)))
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn begin_login(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
    ) -> Result<LoginGate, StoreError> {
        let values = [
            (":one", n(1)),
            (":now", n(now)),
            (":free", n(policy.free)),
            (":hold", n(now + policy.hold_secs)),
            (":furthest", n(policy.furthest_block(now))),
            (":ttl", n(now + policy.window_secs)),
            (":window_end", n(policy.furthest_window_end(now))),
        ];
        // Within the free failures (or no counter yet): counted as it begins, so that
        // parallel attempts meet the count at once.
        // (Its window still runs from the last failure: the TTL is set only when new.)
        // A window ending later than any writer in step with `now` could have set (a clock
        // ahead wrote it, or this one stepped back since) has lapsed, as one past its end:
        // its failures would count for the length of the step and a day.
        let count = (
            "ADD failures :one SET #ttl = if_not_exists(#ttl, :ttl)",
            "attribute_not_exists(failures) \
             OR (failures < :free AND #ttl > :now AND #ttl <= :window_end)",
            LoginTicket::Counted,
        );
        // A counter that does not count at the gate: let it through, taking nothing.
        let free = (
            "SET #ttl = if_not_exists(#ttl, :ttl)",
            "attribute_not_exists(failures) OR failures < :free OR #ttl <= :now \
             OR #ttl > :window_end",
            LoginTicket::Free,
        );
        // Past them, once the delay has passed: one attempt, holding the counter. A delay
        // (or hold) ending later than any writer in step with `now` could have set (a
        // clock ahead wrote it, or this one stepped back since) has lapsed: it would hold
        // the counter for the length of the step.
        let held = (
            "SET blocked_until = :hold",
            "failures >= :free AND #ttl > :now AND #ttl <= :window_end \
             AND (attribute_not_exists(blocked_until) OR blocked_until <= :now \
                  OR blocked_until > :furthest)",
            LoginTicket::Holding,
        );
        // A counter past its window (or lapsed so): this attempt starts it again.
        let restart = (
            "SET failures = :one, #ttl = :ttl REMOVE blocked_until",
            "#ttl <= :now OR #ttl > :window_end",
            LoginTicket::Counted,
        );
        // Each refusal can be a race with another attempt that moved the counter on;
        // the second round settles it.
        let steps = if policy.count_at_gate {
            vec![count, held, restart, count, held]
        } else {
            vec![free, held, free]
        };
        for (expr, cond, ticket) in steps {
            if self
                .update_counter(counter, expr, cond, &values)
                .await?
                .is_some()
            {
                return Ok(LoginGate::Allowed(ticket));
            }
        }
        let until = self
            .get(counter_key(counter))
            .await?
            .and_then(|item| number_of(&item, "blocked_until"))
            .unwrap_or(now)
            .min(policy.furthest_block(now))
            .max(now + 1);
        Ok(LoginGate::Locked { until })
    }

    async fn login_failed(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
        ticket: LoginTicket,
    ) -> Result<i64, StoreError> {
        let values = [
            (":one", n(1)),
            (":now", n(now)),
            (":first", n(now + policy.delay_after(1))),
            (":ttl", n(now + policy.window_secs)),
            (":window_end", n(policy.furthest_window_end(now))),
        ];
        // A new counter (or one past its window, lapsed as `begin_login` says, or cleared
        // since the gate) starts at one; a live one adds one, or keeps the count the gate
        // already made.
        let fresh = (
            "SET failures = :one, blocked_until = :first, #ttl = :ttl",
            "attribute_not_exists(failures) OR #ttl <= :now OR #ttl > :window_end",
        );
        let more = match ticket {
            LoginTicket::Holding | LoginTicket::Free => (
                "ADD failures :one SET #ttl = :ttl",
                "#ttl > :now AND #ttl <= :window_end",
            ),
            LoginTicket::Counted => (
                "SET #ttl = :ttl",
                "attribute_exists(failures) AND #ttl > :now AND #ttl <= :window_end",
            ),
        };
        let mut failures = None;
        for (expr, cond) in [more, fresh, more] {
            if let Some(item) = self.update_counter(counter, expr, cond, &values).await? {
                failures = number_of(&item, "failures");
                break;
            }
        }
        let failures = failures
            .ok_or_else(|| StoreError::Unavailable("login counter contended".into()))?
            .max(1);
        let delay = policy.delay_after(failures);
        if failures > 1 && delay > 0 {
            // Later than what is set, or (a holding attempt) replacing its own hold;
            // never another attempt's hold. A time set past what any writer in step could
            // set has lapsed (the gate lets attempts through it): replaced too, or this
            // failure's delay would be lost.
            let condition = if ticket == LoginTicket::Holding {
                "attribute_not_exists(blocked_until) OR blocked_until < :until \
                 OR blocked_until = :hold OR blocked_until > :furthest"
            } else {
                "attribute_not_exists(blocked_until) OR blocked_until < :until \
                 OR blocked_until > :furthest"
            };
            self.update_counter(
                counter,
                "SET blocked_until = :until",
                condition,
                &[
                    (":until", n(now + delay)),
                    (":hold", n(now + policy.hold_secs)),
                    (":furthest", n(policy.furthest_block(now))),
                ],
            )
            .await?;
        }
        Ok(failures)
    }

    async fn login_released(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
        ticket: LoginTicket,
    ) -> Result<(), StoreError> {
        if ticket == LoginTicket::Free {
            return Ok(());
        }
        let (expr, cond, values) = match ticket {
            LoginTicket::Counted => (
                "ADD failures :less",
                "failures > :zero AND #ttl > :now AND #ttl <= :window_end",
                vec![
                    (":less", n(-1)),
                    (":zero", n(0)),
                    (":now", n(now)),
                    (":window_end", n(policy.furthest_window_end(now))),
                ],
            ),
            LoginTicket::Holding | LoginTicket::Free => (
                "SET blocked_until = :now",
                "blocked_until = :hold",
                vec![(":now", n(now)), (":hold", n(now + policy.hold_secs))],
            ),
        };
        self.update_counter(counter, expr, cond, &values)
            .await
            .map(|_| ())
    }

    async fn clear_login_counter(&self, counter: &LoginCounter) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(counter_key(counter).attrs()))
            .send()
            .await
            .map_err(|e| classify("dynamodb delete", e))?;
        Ok(())
    }

    async fn clear_login_counters_of_email(&self, email_hash: &str) -> Result<usize, StoreError> {
        #[derive(serde::Deserialize)]
        struct Row {
            sk: String,
        }
        let pk = keys::login_failures_of_email_pk(email_hash);
        let rows: Vec<Row> = self.query_prefix(pk.clone(), keys::ADDR_PREFIX).await?;
        for row in &rows {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key(keys::PK, s(pk.clone()))
                .key(keys::SK, s(row.sk.clone()))
                .send()
                .await
                .map_err(|e| classify("dynamodb delete", e))?;
        }
        // And the user's wrong TOTP codes, from anywhere.
        let totp = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::login_totp_failures(email_hash).attrs()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| classify("dynamodb delete", e))?;
        Ok(rows.len() + usize::from(totp.attributes.is_some_and(|a| !a.is_empty())))
    }

    async fn set_pending_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
    ) -> Result<(), StoreError> {
        let ok = self
            .update_user(
                tenant,
                id,
                "SET totp_secret = :s",
                "attribute_exists(pk) AND totp_confirmed = :f",
                &[(":s", s(secret)), (":f", AttributeValue::Bool(false))],
            )
            .await?;
        if ok {
            return Ok(());
        }
        match self.get_user(tenant, id).await? {
            None => Err(StoreError::NotFound),
            Some(_) => Err(StoreError::Conflict("2FA is already confirmed".into())),
        }
    }

    async fn confirm_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
        step: i64,
    ) -> Result<bool, StoreError> {
        self.update_user(
            tenant,
            id,
            "SET totp_confirmed = :t, last_totp_step = :step",
            // Or already this very confirmation (the same secret confirmed at the same
            // step: a try that landed and whose answer was lost, refused on the SDK's
            // retry by itself), written again as it is.
            "attribute_exists(pk) AND totp_secret = :s \
             AND ((totp_confirmed = :f AND last_totp_step < :step) \
             OR (totp_confirmed = :t AND last_totp_step = :step))",
            &[
                (":t", AttributeValue::Bool(true)),
                (":f", AttributeValue::Bool(false)),
                (":s", s(secret)),
                (":step", n(step)),
            ],
        )
        .await
    }

    async fn reseal_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.update_user(
            tenant,
            id,
            "SET totp_secret = :new",
            "attribute_exists(pk) AND totp_secret = :old",
            &[(":new", s(new)), (":old", s(old))],
        )
        .await
    }

    async fn reset_totp(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        // A user with no enrolment holds `totp_secret` as NULL (or not at all): only a
        // string is a secret. The write answers the item as it leaves it (no second read);
        // refused, the item as it is: none (no such user), or one with nothing to clear.
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::user(tenant, id).attrs()))
            .update_expression(
                "REMOVE totp_secret SET totp_confirmed = :f, \
                 password_version = if_not_exists(password_version, :zero) + :one",
            )
            .condition_expression(
                "attribute_exists(pk) AND (totp_confirmed = :t OR attribute_type(totp_secret, :str))",
            )
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":str", s("S"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Some(from_item(out.attributes.unwrap_or_default())?)),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                refused_item(e.err()).cloned().map(from_item).transpose()
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn accept_totp_step(
        &self,
        tenant: &TenantId,
        id: &str,
        step: i64,
    ) -> Result<bool, StoreError> {
        self.update_user(
            tenant,
            id,
            "SET last_totp_step = :step",
            "attribute_exists(pk) AND last_totp_step < :step",
            &[(":step", n(step))],
        )
        .await
    }

    async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let item = to_item(
            session,
            &keys::session(&session.token_hash).pairs(),
            Some(session.expires_at.timestamp()),
        )?;
        match self
            .transact(vec![self.put(item, Some("attribute_not_exists(pk)"))?])
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => {
                Err(StoreError::Conflict("session exists".into()))
            }
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.now_secs();
        Ok(self
            .get(keys::session(token_hash))
            .await?
            .map(from_item::<SessionRecord>)
            .transpose()?
            .filter(|s| s.expires_at.timestamp() > now))
    }

    async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::session(token_hash).attrs()))
            .update_expression("SET revoked = :t")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn touch_session(
        &self,
        token_hash: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        // Stored as serde writes a `DateTime<Utc>` (RFC 3339), so the item reads back.
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::session(token_hash).attrs()))
            .update_expression("SET last_seen_at = :at")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":at", AttributeValue::S(at.to_rfc3339()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn mark_second_factor(&self, token_hash: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::session(token_hash).attrs()))
            .update_expression("SET second_factor = :t")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn two_factor_required(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        Ok(self
            .get(keys::two_factor_setting(tenant))
            .await?
            .and_then(|i| i.get("required").and_then(|v| v.as_bool().ok()).copied())
            .unwrap_or(false))
    }

    async fn set_two_factor_required(
        &self,
        tenant: &TenantId,
        required: bool,
    ) -> Result<(), StoreError> {
        // With the tenant's check: a closed tenant's setting (given its TTL by the
        // close-out) is never replaced by one without.
        let mut item = keys::two_factor_setting(tenant).attrs();
        item.insert("required".into(), AttributeValue::Bool(required));
        let items = vec![self.tenant_open_check(tenant)?, self.put(item, None)?];
        // The tenant-open check names the tenant item, which every send's debit holds
        // in its transaction: a conflict with one wrote nothing, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(e) if Self::refused_as_closed(&e) => Err(Self::tenant_closed()),
            Err(e) => Err(e.into_store_error()),
        }
    }
}
