//! The `UserStore` contract on both adapters: email claims, sessions, the failed-login
//! counters and the TOTP step.

use std::sync::Arc;

use chrono::Duration;
use kirim::domain::Role;
use kirim::ports::{
    Clock, LoginCounter, LoginGate, LoginPolicy, LoginTicket, SessionRecord, Tenant, UserRecord,
};
use kirim::store_error::StoreError;

use super::contract::{aws, contract, memory, onboarded, sweep, Ports};

pub(crate) fn user(p: &Ports, t: &Tenant, email: &str) -> UserRecord {
    UserRecord {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        email: email.to_owned(),
        role: Role::Operator,
        password_hash: "$argon2id$not-a-real-hash".into(),
        totp_secret: None,
        totp_confirmed: false,
        last_totp_step: 0,
        created_at: p.clock.now(),
        password_version: 0,
    }
}

pub(crate) fn email() -> String {
    format!(
        "u{}@example.com",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

async fn an_email_belongs_to_one_user_across_all_tenants(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    let e = email();
    let u = user(&p, &t, &e);
    p.users.create_user(&u).await.unwrap();
    assert_eq!(p.users.user_by_email(&e).await.unwrap(), Some(u.clone()));
    assert_eq!(
        p.users.get_user(&t.id, &u.id).await.unwrap(),
        Some(u.clone())
    );
    assert_eq!(p.users.get_user(&other.id, &u.id).await.unwrap(), None);
    for dup in [user(&p, &t, &e), user(&p, &other, &e)] {
        assert!(matches!(
            p.users.create_user(&dup).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            p.users.get_user(&dup.tenant_id, &dup.id).await.unwrap(),
            None
        );
    }
    let second = user(&p, &t, &email());
    p.users.create_user(&second).await.unwrap();
    let listed = p.users.list_users(&t.id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|u| u.id.clone())
            .collect::<Vec<_>>()
            .len(),
        2
    );
    assert!(p.users.list_users(&other.id).await.unwrap().is_empty());

    // Deleting frees the email; another tenant cannot delete it.
    assert!(!p.users.delete_user(&other.id, &u.id).await.unwrap());
    assert!(p.users.delete_user(&t.id, &u.id).await.unwrap());
    assert!(!p.users.delete_user(&t.id, &u.id).await.unwrap());
    assert_eq!(p.users.user_by_email(&e).await.unwrap(), None);
    p.users.create_user(&user(&p, &other, &e)).await.unwrap();
    assert_eq!(
        p.users.user_by_email(&e).await.unwrap().unwrap().tenant_id,
        other.id
    );
}

async fn a_users_role_changes_in_place_and_answers_the_role_it_had(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    let e = email();
    let u = user(&p, &t, &e);
    p.users.create_user(&u).await.unwrap();
    assert_eq!(
        p.users
            .set_user_role(&t.id, &u.id, Role::Admin)
            .await
            .unwrap(),
        Some(Role::Operator)
    );
    assert_eq!(
        p.users
            .set_user_role(&t.id, &u.id, Role::ReadOnly)
            .await
            .unwrap(),
        Some(Role::Admin)
    );
    // The same role given again by another call: that call replaced this role (a call is
    // never taken for another's retry).
    assert_eq!(
        p.users
            .set_user_role(&t.id, &u.id, Role::ReadOnly)
            .await
            .unwrap(),
        Some(Role::ReadOnly)
    );
    // Another tenant's user, or none: nothing written, nothing created.
    assert_eq!(
        p.users
            .set_user_role(&other.id, &u.id, Role::Admin)
            .await
            .unwrap(),
        None
    );
    let nobody = kirim::domain::new_id();
    assert_eq!(
        p.users
            .set_user_role(&t.id, &nobody, Role::Admin)
            .await
            .unwrap(),
        None
    );
    assert_eq!(p.users.get_user(&t.id, &nobody).await.unwrap(), None);
    assert_eq!(p.users.get_user(&other.id, &u.id).await.unwrap(), None);
    // Only the role changed, and the email still finds the user.
    let changed = UserRecord {
        role: Role::ReadOnly,
        ..u.clone()
    };
    assert_eq!(
        p.users.get_user(&t.id, &u.id).await.unwrap(),
        Some(changed.clone())
    );
    assert_eq!(p.users.user_by_email(&e).await.unwrap(), Some(changed));
}

async fn a_session_is_invisible_once_expired_and_marked_when_revoked(p: Ports) {
    let t = onboarded(&p, 0).await;
    let now = p.clock.now();
    let session = SessionRecord {
        token_hash: kirim::secret::token_hash(&kirim::domain::new_id()),
        tenant_id: t.id.clone(),
        user_id: "u1".into(),
        role: Role::Admin,
        created_at: now,
        expires_at: now + Duration::hours(12),
        revoked: false,
        last_seen_at: None,
        password_version: 0,
        second_factor: None,
    };
    p.users.put_session(&session).await.unwrap();
    assert!(matches!(
        p.users.put_session(&session).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        p.users.session_by_hash(&session.token_hash).await.unwrap(),
        Some(session.clone())
    );
    let other = SessionRecord {
        token_hash: kirim::secret::token_hash(&kirim::domain::new_id()),
        ..session.clone()
    };
    p.users.put_session(&other).await.unwrap();
    p.users.revoke_session(&other.token_hash).await.unwrap();
    assert!(
        p.users
            .session_by_hash(&other.token_hash)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    p.users.revoke_session("no-such-hash").await.unwrap();
    // A second factor proved in the session is recorded on it; a missing one is no error.
    p.users
        .mark_second_factor(&session.token_hash)
        .await
        .unwrap();
    assert_eq!(
        p.users
            .session_by_hash(&session.token_hash)
            .await
            .unwrap()
            .unwrap()
            .second_factor,
        Some(true)
    );
    p.users.mark_second_factor("no-such-hash").await.unwrap();
    assert_eq!(
        p.users.session_by_hash("no-such-hash").await.unwrap(),
        None,
        "marking writes no session"
    );

    p.clock.advance(Duration::hours(12));
    assert_eq!(
        p.users.session_by_hash(&session.token_hash).await.unwrap(),
        None,
        "expired sessions are invisible before any sweep"
    );
    let removed = sweep(&p).await.deleted;
    assert_eq!(
        removed.get("session"),
        Some(&2),
        "the sweep removes expired sessions: {removed:?}"
    );
}

fn at(email: &str, addr: &str) -> LoginCounter {
    LoginCounter::EmailAtAddress {
        email_hash: kirim::secret::token_hash(email),
        addr: addr.into(),
    }
}

/// Counts `n` failed attempts through the gate at `now`, asserting each is let through.
async fn fail(p: &Ports, c: &LoginCounter, now: i64, n: usize) {
    let policy = LoginPolicy::of(c);
    for _ in 0..n {
        let LoginGate::Allowed(ticket) = p.users.begin_login(c, now, &policy).await.unwrap() else {
            panic!("attempt refused")
        };
        p.users.login_failed(c, now, &policy, ticket).await.unwrap();
    }
}

async fn failed_logins_cost_nothing_at_first_then_delays_that_double(p: Ports) {
    let c = at(&email(), "198.51.100.7");
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let now = p.clock.now().timestamp();
    fail(&p, &c, now, policy.free as usize).await;
    // The fifth failure: the next attempt waits a second, then two, then four.
    assert_eq!(
        p.users.begin_login(&c, now, &policy).await.unwrap(),
        LoginGate::Locked { until: now + 1 }
    );
    let mut t = now + 1;
    for delay in [2, 4, 8] {
        assert_eq!(
            p.users.begin_login(&c, t, &policy).await.unwrap(),
            LoginGate::Allowed(LoginTicket::Holding)
        );
        assert!(
            p.users
                .login_failed(&c, t, &policy, LoginTicket::Holding)
                .await
                .unwrap()
                > policy.free
        );
        assert_eq!(
            p.users
                .begin_login(&c, t + delay - 1, &policy)
                .await
                .unwrap(),
            LoginGate::Locked { until: t + delay }
        );
        t += delay;
    }
    // Another address, and the same address for another email, are not slowed.
    let elsewhere = LoginCounter::EmailAtAddress {
        email_hash: match &c {
            LoginCounter::EmailAtAddress { email_hash, .. } => email_hash.clone(),
            LoginCounter::Address(_) | LoginCounter::Totp(_) => unreachable!(),
        },
        addr: "203.0.113.9".into(),
    };
    assert_eq!(
        p.users
            .begin_login(&elsewhere, t - 1, &policy)
            .await
            .unwrap(),
        LoginGate::Allowed(LoginTicket::Counted)
    );
    assert_eq!(
        p.users
            .begin_login(&at(&email(), "198.51.100.7"), t - 1, &policy)
            .await
            .unwrap(),
        LoginGate::Allowed(LoginTicket::Counted)
    );
    // A day after the last failure the counter starts again.
    let day = policy.window_secs;
    assert_eq!(
        p.users.begin_login(&c, t + day, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Counted)
    );
    assert_eq!(
        p.users
            .login_failed(&c, t + day, &policy, LoginTicket::Counted)
            .await
            .unwrap(),
        1
    );
}

async fn past_the_free_failures_concurrent_attempts_get_one_through_at_a_time(p: Ports) {
    let c = LoginCounter::Address("198.51.100.8".into());
    let policy = LoginPolicy::ADDRESS;
    let now = p.clock.now().timestamp();
    fail(&p, &c, now, policy.free as usize).await;
    let t = now + 1;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let users: Arc<dyn kirim::ports::UserStore> = p.users.clone();
            let c = c.clone();
            tokio::spawn(async move { users.begin_login(&c, t, &policy).await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == LoginGate::Allowed(LoginTicket::Holding) {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 1, "one attempt in flight past the free failures");
    // An attempt that was not a failure gives its hold back.
    p.users
        .login_released(&c, t, &policy, LoginTicket::Holding)
        .await
        .unwrap();
    assert_eq!(
        p.users.begin_login(&c, t, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Holding)
    );
}

async fn parallel_attempts_within_the_free_failures_are_counted_as_they_begin(p: Ports) {
    let c = at(&email(), "198.51.100.9");
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let now = p.clock.now().timestamp();
    // A burst before any attempt has failed: the free ones, then one holding the counter.
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let users: Arc<dyn kirim::ports::UserStore> = p.users.clone();
            let c = c.clone();
            tokio::spawn(async move { users.begin_login(&c, now, &policy).await })
        })
        .collect();
    let mut tickets = Vec::new();
    for task in tasks {
        if let LoginGate::Allowed(ticket) = task.await.unwrap().unwrap() {
            tickets.push(ticket);
        }
    }
    let counted = tickets
        .iter()
        .filter(|t| **t == LoginTicket::Counted)
        .count();
    assert_eq!(counted, policy.free as usize, "{tickets:?}");
    assert_eq!(tickets.len(), counted + 1, "{tickets:?}");
    // Attempts that end without failing give their count and hold back.
    for ticket in tickets {
        p.users
            .login_released(&c, now, &policy, ticket)
            .await
            .unwrap();
    }
    for _ in 0..policy.free {
        assert_eq!(
            p.users.begin_login(&c, now, &policy).await.unwrap(),
            LoginGate::Allowed(LoginTicket::Counted)
        );
    }
}

async fn a_counted_attempt_that_fails_is_counted_once(p: Ports) {
    let c = at(&email(), "198.51.100.10");
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let now = p.clock.now().timestamp();
    for n in 1..=3 {
        assert_eq!(
            p.users.begin_login(&c, now, &policy).await.unwrap(),
            LoginGate::Allowed(LoginTicket::Counted)
        );
        assert_eq!(
            p.users
                .login_failed(&c, now, &policy, LoginTicket::Counted)
                .await
                .unwrap(),
            n
        );
    }
    // Cleared between the gate and the failure (a success elsewhere, an admin's
    // unlock): the failure starts the counter again.
    assert_eq!(
        p.users.begin_login(&c, now, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Counted)
    );
    p.users.clear_login_counter(&c).await.unwrap();
    assert_eq!(
        p.users
            .login_failed(&c, now, &policy, LoginTicket::Counted)
            .await
            .unwrap(),
        1
    );
}

async fn a_counter_that_does_not_count_at_its_gate_lets_a_burst_through_taking_nothing(p: Ports) {
    let c = LoginCounter::Address("198.51.100.11".into());
    let policy = LoginPolicy {
        count_at_gate: false,
        ..LoginPolicy::ADDRESS
    };
    let now = p.clock.now().timestamp();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let users: Arc<dyn kirim::ports::UserStore> = p.users.clone();
            let c = c.clone();
            tokio::spawn(async move { users.begin_login(&c, now, &policy).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap(),
            LoginGate::Allowed(LoginTicket::Free)
        );
    }
}

async fn a_counters_window_runs_from_its_last_failure_not_its_last_attempt(p: Ports) {
    let c = at(&email(), "198.51.100.12");
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let t0 = p.clock.now().timestamp();
    fail(&p, &c, t0, 4).await;
    // Attempts that succeed all day long (each counted, then given back)...
    for hour in 1..24 {
        let t = t0 + hour * 3600;
        let LoginGate::Allowed(ticket) = p.users.begin_login(&c, t, &policy).await.unwrap() else {
            panic!("refused at hour {hour}")
        };
        p.users
            .login_released(&c, t, &policy, ticket)
            .await
            .unwrap();
    }
    // ...do not keep the four failures alive: a day after the last one, they are gone.
    let later = t0 + policy.window_secs + 1;
    let LoginGate::Allowed(ticket) = p.users.begin_login(&c, later, &policy).await.unwrap() else {
        panic!("refused")
    };
    assert_eq!(
        p.users
            .login_failed(&c, later, &policy, ticket)
            .await
            .unwrap(),
        1
    );
}

async fn a_counted_failure_never_cuts_short_another_attempts_hold(p: Ports) {
    let c = at(&email(), "198.51.100.13");
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let now = p.clock.now().timestamp();
    fail(&p, &c, now - 100, 4).await;
    // A is counted (the fifth), B takes the hold past the free ones, then A fails.
    let a = p.users.begin_login(&c, now, &policy).await.unwrap();
    assert_eq!(a, LoginGate::Allowed(LoginTicket::Counted));
    let b = p.users.begin_login(&c, now, &policy).await.unwrap();
    assert_eq!(b, LoginGate::Allowed(LoginTicket::Holding));
    p.users
        .login_failed(&c, now, &policy, LoginTicket::Counted)
        .await
        .unwrap();
    // B is still in flight: nothing else goes through until its hold ends.
    assert_eq!(
        p.users.begin_login(&c, now + 1, &policy).await.unwrap(),
        LoginGate::Locked {
            until: now + policy.hold_secs
        }
    );
}

/// A counter held by an attempt through a writer whose clock was hours ahead (another
/// instance's, or this one's before it stepped back), which never ended (its process died):
/// its `blocked_until` lies further ahead than any writer in step could set it, and has
/// lapsed. The next attempt goes through holding the counter, and from there the holds and
/// delays are the policy's own, the longest one in full. (Failures that writer counted
/// would also have moved the counter's window out of step: lapsed whole, see
/// `a_counter_whose_window_a_clock_hours_ahead_wrote_starts_again_at_the_next_attempt`.)
async fn a_lock_written_by_a_clock_hours_ahead_holds_no_longer_than_the_policy_allows(p: Ports) {
    let c = at(&email(), "198.51.100.14");
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let now = p.clock.now().timestamp();
    let ahead = now + 6 * 3600;
    fail(&p, &c, now, policy.free as usize).await;
    assert_eq!(
        p.users.begin_login(&c, ahead, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Holding)
    );
    assert_eq!(
        p.users.begin_login(&c, ahead + 1, &policy).await.unwrap(),
        LoginGate::Locked {
            until: ahead + policy.hold_secs
        },
        "held, as the clock ahead sees it"
    );
    // In step (the clock stepped back six hours): lapsed, not six hours to go.
    assert_eq!(
        p.users.begin_login(&c, now, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Holding)
    );
    // That attempt holds the counter for its hold, as any does.
    assert_eq!(
        p.users.begin_login(&c, now + 1, &policy).await.unwrap(),
        LoginGate::Locked {
            until: now + policy.hold_secs
        }
    );
    // It fails: the sixth failure's delay, two seconds from now.
    assert_eq!(
        p.users
            .login_failed(&c, now, &policy, LoginTicket::Holding)
            .await
            .unwrap(),
        policy.free + 1
    );
    assert_eq!(
        p.users.begin_login(&c, now + 1, &policy).await.unwrap(),
        LoginGate::Locked { until: now + 2 }
    );
    // Failing on until the delay is the longest: that one holds in full.
    let mut t = now + 2;
    loop {
        assert_eq!(
            p.users.begin_login(&c, t, &policy).await.unwrap(),
            LoginGate::Allowed(LoginTicket::Holding),
            "at {}",
            t - now
        );
        let failures = p
            .users
            .login_failed(&c, t, &policy, LoginTicket::Holding)
            .await
            .unwrap();
        let delay = policy.delay_after(failures);
        if delay == policy.max_delay_secs {
            assert_eq!(
                p.users
                    .begin_login(&c, t + delay - 1, &policy)
                    .await
                    .unwrap(),
                LoginGate::Locked { until: t + delay }
            );
            break;
        }
        t += delay;
    }
    // A writer a few seconds ahead (within the skew) is in step: its lock holds.
    let near = at(&email(), "198.51.100.14");
    fail(&p, &near, now + 3, policy.free as usize).await;
    assert_eq!(
        p.users.begin_login(&near, now, &policy).await.unwrap(),
        LoginGate::Locked { until: now + 4 }
    );
}

/// Two attempts at once, one through an instance whose clock is hours ahead: that one holds
/// the counter until hours from now (and ends without a word: its process died). The
/// in-step attempt's failure still sets its delay over that hold (the gate lets attempts
/// through the lapsed hold, so a delay kept behind it would be lost).
async fn a_failure_beside_a_hold_from_a_clock_ahead_still_sets_its_delay(p: Ports) {
    let c = at(&email(), "198.51.100.15");
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let now = p.clock.now().timestamp();
    fail(&p, &c, now, policy.free as usize - 1).await;
    assert_eq!(
        p.users.begin_login(&c, now, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Counted)
    );
    assert_eq!(
        p.users
            .begin_login(&c, now + 6 * 3600, &policy)
            .await
            .unwrap(),
        LoginGate::Allowed(LoginTicket::Holding)
    );
    assert_eq!(
        p.users
            .login_failed(&c, now, &policy, LoginTicket::Counted)
            .await
            .unwrap(),
        policy.free
    );
    assert_eq!(
        p.users.begin_login(&c, now, &policy).await.unwrap(),
        LoginGate::Locked { until: now + 1 }
    );
    assert_eq!(
        p.users.begin_login(&c, now + 1, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Holding)
    );
}

/// Failures counted by a writer whose clock was hours ahead (another instance's, or this
/// one's before it stepped back) carry a window ending a day after that clock's now: later
/// than any writer in step could set it. The counter has lapsed: the next attempt starts it
/// again, rather than each single later failure adding to the old ones for the step and a
/// day and locking again. A writer a few seconds ahead (within the skew) is in step.
async fn a_counter_whose_window_a_clock_hours_ahead_wrote_starts_again_at_the_next_attempt(
    p: Ports,
) {
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let now = p.clock.now().timestamp();
    let ahead = now + 6 * 3600;
    // Locked as the clock ahead sees it; in step, its failures have lapsed with it.
    let locked = at(&email(), "198.51.100.16");
    fail(&p, &locked, ahead, policy.free as usize).await;
    assert_eq!(
        p.users.begin_login(&locked, ahead, &policy).await.unwrap(),
        LoginGate::Locked { until: ahead + 1 }
    );
    assert_eq!(
        p.users.begin_login(&locked, now, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Counted),
        "started again, not held"
    );
    assert_eq!(
        p.users
            .login_failed(&locked, now, &policy, LoginTicket::Counted)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        p.users.begin_login(&locked, now, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Counted),
        "one failure locks nothing"
    );
    // Within the free failures too: four from the clock ahead, then one in step is the first.
    let counting = at(&email(), "198.51.100.16");
    fail(&p, &counting, ahead, policy.free as usize - 1).await;
    let LoginGate::Allowed(ticket) = p.users.begin_login(&counting, now, &policy).await.unwrap()
    else {
        panic!("refused")
    };
    assert_eq!(
        p.users
            .login_failed(&counting, now, &policy, ticket)
            .await
            .unwrap(),
        1
    );
    // A failure held past the free ones from an in-step gate meets a window a clock ahead
    // wrote meanwhile (a race): it starts the counter again, too.
    let held = at(&email(), "198.51.100.16");
    fail(&p, &held, ahead, policy.free as usize).await;
    assert_eq!(
        p.users
            .login_failed(&held, now, &policy, LoginTicket::Holding)
            .await
            .unwrap(),
        1
    );
    // A counter two minutes ahead (within the skew: an instance seconds or minutes ahead
    // must never hand its free failures back) is in step: its failures count, and a lock it
    // wrote holds.
    let near_lock = at(&email(), "198.51.100.16");
    fail(&p, &near_lock, now + 120, policy.free as usize).await;
    assert!(
        matches!(
            p.users.begin_login(&near_lock, now, &policy).await.unwrap(),
            LoginGate::Locked { .. }
        ),
        "a lock two minutes ahead holds"
    );
    let near = at(&email(), "198.51.100.16");
    fail(&p, &near, now + 120, 2).await;
    fail(&p, &near, now, 1).await;
    let LoginGate::Allowed(ticket) = p.users.begin_login(&near, now, &policy).await.unwrap() else {
        panic!("refused")
    };
    assert_eq!(
        p.users
            .login_failed(&near, now, &policy, ticket)
            .await
            .unwrap(),
        4
    );
}

async fn clearing_an_emails_counters_clears_every_address_and_nothing_else(p: Ports) {
    let e = email();
    let now = p.clock.now().timestamp();
    let policy = LoginPolicy::EMAIL_AT_ADDRESS;
    let (a, b) = (at(&e, "198.51.100.7"), at(&e, "2001:db8:1:2::"));
    let other = at(&email(), "198.51.100.7");
    for c in [&a, &b, &other] {
        fail(&p, c, now, policy.free as usize).await;
        assert!(matches!(
            p.users.begin_login(c, now, &policy).await.unwrap(),
            LoginGate::Locked { .. }
        ));
    }
    let hash = kirim::secret::token_hash(&e);
    assert_eq!(
        p.users.clear_login_counters_of_email(&hash).await.unwrap(),
        2
    );
    for c in [&a, &b] {
        assert_eq!(
            p.users.begin_login(c, now, &policy).await.unwrap(),
            LoginGate::Allowed(LoginTicket::Counted)
        );
    }
    assert!(matches!(
        p.users.begin_login(&other, now, &policy).await.unwrap(),
        LoginGate::Locked { .. }
    ));
    p.users.clear_login_counter(&other).await.unwrap();
    assert_eq!(
        p.users.begin_login(&other, now, &policy).await.unwrap(),
        LoginGate::Allowed(LoginTicket::Counted)
    );
}

async fn a_totp_step_is_accepted_once_and_confirmation_needs_the_pending_secret(p: Ports) {
    let t = onboarded(&p, 0).await;
    let u = user(&p, &t, &email());
    p.users.create_user(&u).await.unwrap();
    p.users
        .set_pending_totp(&t.id, &u.id, "SECRETONE")
        .await
        .unwrap();
    p.users
        .set_pending_totp(&t.id, &u.id, "SECRETTWO")
        .await
        .unwrap();
    assert!(
        !p.users
            .confirm_totp(&t.id, &u.id, "SECRETONE", 100)
            .await
            .unwrap(),
        "only the pending secret confirms"
    );
    assert!(p
        .users
        .confirm_totp(&t.id, &u.id, "SECRETTWO", 100)
        .await
        .unwrap());
    let stored = p.users.get_user(&t.id, &u.id).await.unwrap().unwrap();
    assert!(stored.totp_confirmed);
    assert_eq!(stored.last_totp_step, 100);
    assert!(matches!(
        p.users.set_pending_totp(&t.id, &u.id, "SECRETTHREE").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!p.users.accept_totp_step(&t.id, &u.id, 100).await.unwrap());
    assert!(!p.users.accept_totp_step(&t.id, &u.id, 99).await.unwrap());
    assert!(p.users.accept_totp_step(&t.id, &u.id, 101).await.unwrap());
    assert!(!p.users.accept_totp_step(&t.id, &u.id, 101).await.unwrap());
    assert!(matches!(
        p.users.set_pending_totp(&t.id, "ghost", "X").await,
        Err(StoreError::NotFound)
    ));
    // A user removed while their code was being checked: refused alike, not an error.
    assert!(!p.users.accept_totp_step(&t.id, "ghost", 102).await.unwrap());
    assert!(!p
        .users
        .confirm_totp(&t.id, "ghost", "SECRETTWO", 102)
        .await
        .unwrap());
}

async fn a_password_is_replaced_only_over_the_hash_that_was_checked(p: Ports) {
    let t = onboarded(&p, 0).await;
    let u = user(&p, &t, &email());
    p.users.create_user(&u).await.unwrap();
    assert!(
        !p.users
            .set_password(&t.id, &u.id, "$argon2id$another", "$argon2id$new")
            .await
            .unwrap(),
        "changed meanwhile: nothing written"
    );
    assert_eq!(
        p.users
            .get_user(&t.id, &u.id)
            .await
            .unwrap()
            .unwrap()
            .password_version,
        0
    );
    assert!(p
        .users
        .set_password(&t.id, &u.id, &u.password_hash, "$argon2id$new")
        .await
        .unwrap());
    let stored = p.users.get_user(&t.id, &u.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, "$argon2id$new");
    assert_eq!(stored.password_version, 1);
    assert!(!p
        .users
        .set_password(&t.id, &u.id, &u.password_hash, "$argon2id$third")
        .await
        .unwrap());
    assert!(p
        .users
        .set_password(&t.id, &u.id, "$argon2id$new", "$argon2id$third")
        .await
        .unwrap());
    assert_eq!(
        p.users
            .get_user(&t.id, &u.id)
            .await
            .unwrap()
            .unwrap()
            .password_version,
        2
    );
    assert!(!p
        .users
        .set_password(&t.id, "ghost", "x", "y")
        .await
        .unwrap());
}

async fn the_two_factor_requirement_is_per_tenant_and_off_by_default(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    assert!(!p.users.two_factor_required(&t.id).await.unwrap());
    p.users.set_two_factor_required(&t.id, true).await.unwrap();
    assert!(p.users.two_factor_required(&t.id).await.unwrap());
    assert!(!p.users.two_factor_required(&other.id).await.unwrap());
    p.users.set_two_factor_required(&t.id, false).await.unwrap();
    assert!(!p.users.two_factor_required(&t.id).await.unwrap());
}

async fn touching_a_session_records_its_last_use(p: Ports) {
    let t = onboarded(&p, 0).await;
    let now = p.clock.now();
    let session = SessionRecord {
        token_hash: kirim::secret::token_hash(&kirim::domain::new_id()),
        tenant_id: t.id.clone(),
        user_id: "u1".into(),
        role: Role::ReadOnly,
        created_at: now,
        expires_at: now + Duration::hours(12),
        revoked: false,
        last_seen_at: None,
        password_version: 0,
        second_factor: None,
    };
    p.users.put_session(&session).await.unwrap();
    let at = now + Duration::minutes(5);
    p.users
        .touch_session(&session.token_hash, at)
        .await
        .unwrap();
    let seen = p
        .users
        .session_by_hash(&session.token_hash)
        .await
        .unwrap()
        .and_then(|s| s.last_seen_at);
    assert_eq!(seen.map(|t| t.timestamp()), Some(at.timestamp()));
    p.users.touch_session("no-such-hash", at).await.unwrap();
}

/// A closed tenant's close-out gives its keys, users and settings their TTL; none is
/// written after it (a request a warm instance served with the tenant still cached open)
/// without one: each write is refused, said so, and nothing is written. What it had stays.
async fn a_closed_tenant_takes_no_new_key_user_or_setting(p: Ports) {
    use kirim::ports::{StatusCallback, TenantStatus, TENANT_CLOSED};
    let t = onboarded(&p, 0).await;
    let kept = super::contract::key_for(&t);
    p.api_keys.put_api_key(&kept).await.unwrap();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), p.clock.now())
        .await
        .unwrap();
    let closed = || StoreError::Conflict(TENANT_CLOSED.into());
    let late = super::contract::key_for(&t);
    assert_eq!(p.api_keys.put_api_key(&late).await, Err(closed()));
    assert_eq!(p.api_keys.get_api_key(&t.id, &late.id).await.unwrap(), None);
    assert_eq!(
        p.api_keys
            .rotate_api_key(&t.id, &kept.id, &late, p.clock.now())
            .await,
        Err(closed())
    );
    assert_eq!(p.api_keys.get_api_key(&t.id, &late.id).await.unwrap(), None);
    assert_eq!(
        p.api_keys
            .get_api_key(&t.id, &kept.id)
            .await
            .unwrap()
            .and_then(|k| k.replaced_by),
        None,
        "the kept key not rotated"
    );
    let e = email();
    let u = user(&p, &t, &e);
    assert_eq!(p.users.create_user(&u).await, Err(closed()));
    assert_eq!(p.users.get_user(&t.id, &u.id).await.unwrap(), None);
    assert_eq!(p.users.user_by_email(&e).await.unwrap(), None);
    assert_eq!(
        p.users.set_two_factor_required(&t.id, true).await,
        Err(closed())
    );
    assert!(!p.users.two_factor_required(&t.id).await.unwrap());
    let setting = StatusCallback {
        tenant_id: t.id.clone(),
        url: "https://hooks.example.com/kirim".into(),
        secret_name: format!("kirim/tenants/{}/status-callback-secret", t.id),
        secret_version: None,
        updated_at: p.clock.now(),
    };
    assert_eq!(
        p.status_callbacks.put_status_callback(&setting).await,
        Err(closed())
    );
    assert_eq!(
        p.status_callbacks.get_status_callback(&t.id).await.unwrap(),
        None
    );
}

/// One page at a time (one read each), oldest first by id: walking the cursors lists each
/// of the tenant's users once and ends without a cursor; a made-up cursor is refused, and
/// another tenant's never shows that tenant's users.
async fn users_are_listed_a_page_at_a_time_each_once_and_only_the_tenants_own(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let u = user(&p, &t, &email());
        p.users.create_user(&u).await.unwrap();
        ids.push(u.id);
    }
    for _ in 0..3 {
        p.users
            .create_user(&user(&p, &other, &email()))
            .await
            .unwrap();
    }
    ids.sort();
    let (mut walked, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = p
            .users
            .list_users_page(&t.id, 2, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.users.len() <= 2, "{page:?}");
        assert!(page.users.iter().all(|u| u.tenant_id == t.id));
        walked.extend(page.users.into_iter().map(|u| u.id));
        pages += 1;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 10, "the walk ends");
    }
    assert_eq!(walked, ids);
    assert_eq!(pages, 3);
    for limit in [3, 100] {
        let whole = p
            .users
            .list_users_page(&other.id, limit, None)
            .await
            .unwrap();
        assert_eq!((whole.users.len(), whole.next_cursor), (3, None));
    }
    let long = "A".repeat(2000);
    for made_up in ["", "nope", "not a cursor", long.as_str()] {
        assert!(
            matches!(
                p.users.list_users_page(&t.id, 2, Some(made_up)).await,
                Err(StoreError::InvalidCursor)
            ),
            "{made_up}"
        );
    }
    let theirs = p
        .users
        .list_users_page(&other.id, 1, None)
        .await
        .unwrap()
        .next_cursor
        .expect("the other tenant has three users");
    // Another tenant's cursor is refused, as on every list (not read as a position).
    assert!(matches!(
        p.users.list_users_page(&t.id, 100, Some(&theirs)).await,
        Err(StoreError::InvalidCursor)
    ));
    // So is another list's of the same tenant (its API keys'), both ways.
    for _ in 0..2 {
        p.api_keys
            .put_api_key(&super::contract::key_for(&t))
            .await
            .unwrap();
    }
    let keys_cursor = p
        .api_keys
        .list_api_keys_page(&t.id, 1, None)
        .await
        .unwrap()
        .next_cursor
        .expect("the tenant has three keys");
    assert!(matches!(
        p.users
            .list_users_page(&t.id, 100, Some(&keys_cursor))
            .await,
        Err(StoreError::InvalidCursor)
    ));
    let users_cursor = p
        .users
        .list_users_page(&t.id, 1, None)
        .await
        .unwrap()
        .next_cursor
        .expect("the tenant has more than one user");
    assert!(matches!(
        p.api_keys
            .list_api_keys_page(&t.id, 100, Some(&users_cursor))
            .await,
        Err(StoreError::InvalidCursor)
    ));
}

/// A password change repeated with the same arguments once it landed (what the SDK's retry
/// of a try whose answer was lost sends): applied, as the first answered, and counted once
/// (`password_version` moves on once); the new hash is salted, unique to its change, so no
/// other change is taken for it, and a change over the old hash is still refused.
async fn a_password_change_repeated_after_it_landed_is_applied_once(p: Ports) {
    let t = onboarded(&p, 0).await;
    let u = user(&p, &t, &email());
    p.users.create_user(&u).await.unwrap();
    for _ in 0..2 {
        assert!(
            p.users
                .set_password(&t.id, &u.id, &u.password_hash, "$argon2id$new-salted")
                .await
                .unwrap(),
            "answered as applied"
        );
    }
    let stored = p.users.get_user(&t.id, &u.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, "$argon2id$new-salted");
    assert_eq!(stored.password_version, 1, "counted once");
    assert!(!p
        .users
        .set_password(&t.id, &u.id, &u.password_hash, "$argon2id$another")
        .await
        .unwrap());
    assert_eq!(
        p.users
            .get_user(&t.id, &u.id)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "$argon2id$new-salted"
    );
}

/// A 2FA confirmation repeated with the same arguments once it landed (the SDK's retry of a
/// try whose answer was lost): confirmed, as the first answered, nothing changed; the same
/// secret at another step is not this confirmation (a code is accepted once).
async fn a_totp_confirmation_repeated_after_it_landed_is_confirmed(p: Ports) {
    let t = onboarded(&p, 0).await;
    let u = user(&p, &t, &email());
    p.users.create_user(&u).await.unwrap();
    p.users
        .set_pending_totp(&t.id, &u.id, "SECRETONE")
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(
            p.users
                .confirm_totp(&t.id, &u.id, "SECRETONE", 100)
                .await
                .unwrap(),
            "answered as confirmed"
        );
    }
    let stored = p.users.get_user(&t.id, &u.id).await.unwrap().unwrap();
    assert!(stored.totp_confirmed);
    assert_eq!(stored.last_totp_step, 100);
    for step in [99, 101] {
        assert!(!p
            .users
            .confirm_totp(&t.id, &u.id, "SECRETONE", step)
            .await
            .unwrap());
    }
    assert!(!p
        .users
        .confirm_totp(&t.id, &u.id, "SECRETTWO", 100)
        .await
        .unwrap());
    assert_eq!(
        p.users
            .get_user(&t.id, &u.id)
            .await
            .unwrap()
            .unwrap()
            .last_totp_step,
        100
    );
}

/// An admin's 2FA reset: the enrolment cleared, pending or confirmed, and the user's
/// sessions ended (`password_version` moves on), in one write; a user with nothing to clear
/// (a reset repeated after it landed too) is answered as it is, unchanged; another
/// tenant's user, no user, or one removed meanwhile is `None` and nothing is written back.
async fn a_2fa_reset_clears_the_enrolment_once_and_writes_back_no_removed_user(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    let e = email();
    let u = user(&p, &t, &e);
    p.users.create_user(&u).await.unwrap();
    assert_eq!(
        p.users.reset_totp(&t.id, &u.id).await.unwrap(),
        Some(u.clone()),
        "nothing to clear: answered as it is"
    );
    assert_eq!(
        p.users.get_user(&t.id, &u.id).await.unwrap(),
        Some(u.clone())
    );

    // A pending enrolment: cleared, and its secret confirms nothing after.
    p.users
        .set_pending_totp(&t.id, &u.id, "SECRETONE")
        .await
        .unwrap();
    let once = UserRecord {
        password_version: 1,
        ..u.clone()
    };
    assert_eq!(
        p.users.reset_totp(&t.id, &u.id).await.unwrap(),
        Some(once.clone())
    );
    assert!(!p
        .users
        .confirm_totp(&t.id, &u.id, "SECRETONE", 100)
        .await
        .unwrap());

    // A confirmed one: 2FA off, the last step kept, nothing else changed.
    p.users
        .set_pending_totp(&t.id, &u.id, "SECRETTWO")
        .await
        .unwrap();
    assert!(p
        .users
        .confirm_totp(&t.id, &u.id, "SECRETTWO", 100)
        .await
        .unwrap());
    let twice = UserRecord {
        password_version: 2,
        last_totp_step: 100,
        ..u.clone()
    };
    for _ in 0..2 {
        assert_eq!(
            p.users.reset_totp(&t.id, &u.id).await.unwrap(),
            Some(twice.clone()),
            "cleared once; again (the SDK's retry of a try that landed): as it is"
        );
    }
    assert_eq!(
        p.users.get_user(&t.id, &u.id).await.unwrap(),
        Some(twice.clone())
    );
    assert_eq!(p.users.user_by_email(&e).await.unwrap(), Some(twice));
    assert!(
        !p.users.accept_totp_step(&t.id, &u.id, 100).await.unwrap(),
        "no step accepted twice"
    );

    // Another tenant's user, no user, a user removed: nothing written, nothing created.
    p.users
        .set_pending_totp(&t.id, &u.id, "SECRETTHREE")
        .await
        .unwrap();
    assert_eq!(p.users.reset_totp(&other.id, &u.id).await.unwrap(), None);
    assert_eq!(
        p.users
            .get_user(&t.id, &u.id)
            .await
            .unwrap()
            .and_then(|u| u.totp_secret),
        Some("SECRETTHREE".into())
    );
    let nobody = kirim::domain::new_id();
    assert_eq!(p.users.reset_totp(&t.id, &nobody).await.unwrap(), None);
    assert_eq!(p.users.get_user(&t.id, &nobody).await.unwrap(), None);
    assert!(p.users.delete_user(&t.id, &u.id).await.unwrap());
    assert_eq!(p.users.reset_totp(&t.id, &u.id).await.unwrap(), None);
    assert_eq!(p.users.get_user(&t.id, &u.id).await.unwrap(), None);
    assert_eq!(p.users.get_user(&other.id, &u.id).await.unwrap(), None);
}

contract!(
    a_2fa_reset_clears_the_enrolment_once_and_writes_back_no_removed_user,
    a_password_change_repeated_after_it_landed_is_applied_once,
    a_totp_confirmation_repeated_after_it_landed_is_confirmed,
    users_are_listed_a_page_at_a_time_each_once_and_only_the_tenants_own,
    a_closed_tenant_takes_no_new_key_user_or_setting,
    a_password_is_replaced_only_over_the_hash_that_was_checked,
    touching_a_session_records_its_last_use,
    an_email_belongs_to_one_user_across_all_tenants,
    a_users_role_changes_in_place_and_answers_the_role_it_had,
    a_session_is_invisible_once_expired_and_marked_when_revoked,
    failed_logins_cost_nothing_at_first_then_delays_that_double,
    past_the_free_failures_concurrent_attempts_get_one_through_at_a_time,
    parallel_attempts_within_the_free_failures_are_counted_as_they_begin,
    a_counted_attempt_that_fails_is_counted_once,
    a_counter_that_does_not_count_at_its_gate_lets_a_burst_through_taking_nothing,
    a_counters_window_runs_from_its_last_failure_not_its_last_attempt,
    a_counted_failure_never_cuts_short_another_attempts_hold,
    a_lock_written_by_a_clock_hours_ahead_holds_no_longer_than_the_policy_allows,
    a_failure_beside_a_hold_from_a_clock_ahead_still_sets_its_delay,
    a_counter_whose_window_a_clock_hours_ahead_wrote_starts_again_at_the_next_attempt,
    clearing_an_emails_counters_clears_every_address_and_nothing_else,
    a_totp_step_is_accepted_once_and_confirmation_needs_the_pending_secret,
    the_two_factor_requirement_is_per_tenant_and_off_by_default,
);
