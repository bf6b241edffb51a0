//! An in-process queue with SQS's semantics where they matter: visibility timeouts,
//! receive counts, a dead-letter list after the receive limit, and retention (a message is
//! gone its queue's retention after it was sent, a dead letter its dead-letter queue's
//! retention after its first enqueue).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, Notify};

use crate::domain::{QueueShape, DISPATCH_QUEUE};
use crate::ports::{Clock, DeadLetter, DispatchQueue, Received, Redriven, SystemClock};
use crate::store_error::StoreError;

struct Entry {
    /// Its message id, as SQS would give it (kept when it is dead-lettered).
    id: String,
    body: String,
    visible_at: Instant,
    receive_count: u32,
    /// When it was sent, by the queue's clock: its retention counts from here, on the queue
    /// and, once dead-lettered, on the dead-letter list.
    sent_at: DateTime<Utc>,
}

/// An SQS-like queue: received messages stay hidden for the visibility timeout and come
/// back unless deleted; after `max_receives` receives a message moves to the dead letters.
/// A message older than the retention is never received again, and a dead letter older
/// than the dead-letter retention (from its first enqueue, as SQS counts a standard queue's)
/// is neither listed nor redriven: both are dropped when a receive, a listing or a redrive
/// finds them. Visibility is real time; retention is the injected [`Clock`]'s.
pub struct MemoryQueue {
    state: Mutex<State>,
    notify: Notify,
    visibility: Duration,
    max_receives: u32,
    retention: chrono::Duration,
    dead_letter_retention: chrono::Duration,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// By the order they were sent in (keys only grow): a delete is one removal. (A list
    /// of the keys beside a hash map was copied whole on every receive and searched on
    /// every delete: with a backlog, such as a send load or a campaign queued faster than
    /// the number's rate, each cost the whole queue under the lock the sends wait on.)
    /// Being in sending order, the oldest by `sent_at` are first (with a clock that does
    /// not go back), so the expired ones are taken from the front.
    entries: BTreeMap<u64, Entry>,
    /// Every entry once, by when it is visible (then by key): a receive takes from the
    /// front and stops at the first still hidden, so messages in flight, given back for
    /// later or delayed (a paced campaign's) cost it nothing.
    by_visibility: BTreeSet<(Instant, u64)>,
    receipts: HashMap<String, u64>,
    dead: Vec<DeadLetter>,
}

/// A retention as a chrono duration (a `Duration` too long for one: never expires).
fn span(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl MemoryQueue {
    /// A queue hiding a received message for `visibility` and parking it after
    /// `max_receives` receives, with the dispatch queue's retentions on the system clock.
    pub fn new(visibility: Duration, max_receives: u32) -> Self {
        Self::shaped(
            QueueShape {
                visibility,
                max_receives,
                ..DISPATCH_QUEUE
            },
            Arc::new(SystemClock),
        )
    }

    /// A queue kept as `shape` says (one of the template's: `domain::DISPATCH_QUEUE`,
    /// `domain::STATUS_CALLBACK_QUEUE`), its retention counted on `clock`.
    pub fn shaped(shape: QueueShape, clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            visibility: shape.visibility,
            max_receives: shape.max_receives,
            retention: span(shape.retention),
            dead_letter_retention: span(shape.dead_letter_retention),
            clock,
        }
    }

    fn push(&self, state: &mut State, body: String) {
        self.push_at(state, body, Instant::now())
    }

    fn push_at(&self, state: &mut State, body: String, visible_at: Instant) {
        state.next += 1;
        let key = state.next;
        state.by_visibility.insert((visible_at, key));
        state.entries.insert(
            key,
            Entry {
                id: crate::domain::new_id(),
                body,
                visible_at,
                receive_count: 0,
                sent_at: self.clock.now(),
            },
        );
    }

    fn expired(sent_at: DateTime<Utc>, retention: chrono::Duration, now: DateTime<Utc>) -> bool {
        sent_at
            .checked_add_signed(retention)
            .is_some_and(|until| until <= now)
    }

    /// Drops the messages past the retention (from the front: the oldest sent) and the
    /// dead letters past theirs, as SQS deletes them.
    fn prune(&self, state: &mut State, now: DateTime<Utc>) {
        let State {
            entries,
            by_visibility,
            receipts,
            dead,
            ..
        } = state;
        while let Some(entry) = entries.first_entry() {
            if !Self::expired(entry.get().sent_at, self.retention, now) {
                break;
            }
            let key = *entry.key();
            let e = entry.remove();
            by_visibility.remove(&(e.visible_at, key));
            forget_receipts(receipts, key, e.receive_count);
        }
        dead.retain(|d| !Self::expired(d.sent_at, self.dead_letter_retention, now));
    }

    /// Up to `max` visible messages, longest visible first, each hidden for the visibility
    /// timeout; one received `max_receives` times already moves to the dead letters
    /// instead, and one past the retention is dropped.
    fn take_visible(&self, state: &mut State, max: usize) -> Vec<Received> {
        let now = Instant::now();
        let today = self.clock.now();
        self.prune(state, today);
        let mut out = Vec::new();
        let mut spent = Vec::new();
        let mut gone = Vec::new();
        let State {
            entries,
            receipts,
            by_visibility,
            ..
        } = state;
        while out.len() < max {
            let Some(&(at, id)) = by_visibility.first() else {
                break;
            };
            if at > now {
                break;
            }
            by_visibility.pop_first();
            let Some(entry) = entries.get_mut(&id) else {
                continue;
            };
            // Past the retention (one sent after a later one, by a clock that went back,
            // is still behind it in `entries`): never received again.
            if Self::expired(entry.sent_at, self.retention, today) {
                gone.push(id);
                continue;
            }
            if entry.receive_count >= self.max_receives {
                // Redrive: like SQS, at receive time.
                spent.push(id);
                continue;
            }
            entry.receive_count += 1;
            entry.visible_at = now + self.visibility;
            by_visibility.insert((entry.visible_at, id));
            let receipt = format!("{id}-{}", entry.receive_count);
            out.push(Received {
                receipt: receipt.clone(),
                body: entry.body.clone(),
                receive_count: entry.receive_count,
            });
            receipts.insert(receipt, id);
        }
        for id in gone {
            if let Some(e) = state.entries.remove(&id) {
                forget_receipts(&mut state.receipts, id, e.receive_count);
            }
        }
        for id in spent {
            if let Some(e) = state.entries.remove(&id) {
                forget_receipts(&mut state.receipts, id, e.receive_count);
                // Its first enqueue's time goes with it: the dead-letter retention counts
                // from there (and one past it already is dropped at once, as on SQS).
                if !Self::expired(e.sent_at, self.dead_letter_retention, today) {
                    state.dead.push(DeadLetter {
                        id: e.id,
                        body: e.body,
                        receive_count: e.receive_count,
                        sent_at: e.sent_at,
                    });
                }
            }
        }
        out
    }
}

/// Forgets the receipts the entry `key` was given (one per receive), which no longer name
/// a message on the queue.
fn forget_receipts(receipts: &mut HashMap<String, u64>, key: u64, receives: u32) {
    for n in 1..=receives {
        receipts.remove(&format!("{key}-{n}"));
    }
}

#[async_trait]
impl DispatchQueue for MemoryQueue {
    async fn send(&self, body: &str) -> Result<(), StoreError> {
        let mut s = self.state.lock().await;
        self.push(&mut s, body.to_owned());
        drop(s);
        self.notify.notify_waiters();
        Ok(())
    }

    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<(), StoreError> {
        self.send_batch_delayed(std::slice::from_ref(&body.to_owned()), delay)
            .await
    }

    async fn send_batch(&self, bodies: &[String]) -> Result<(), StoreError> {
        self.send_batch_delayed(bodies, Duration::ZERO).await
    }

    async fn send_batch_delayed(
        &self,
        bodies: &[String],
        delay: Duration,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock().await;
        let at = Instant::now() + delay;
        for body in bodies {
            self.push_at(&mut s, body.clone(), at);
        }
        drop(s);
        self.notify.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, StoreError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().await;
                let got = self.take_visible(&mut s, max);
                if !got.is_empty() {
                    return Ok(got);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Wake on a new message, or poll again soon for ones whose visibility lapsed.
            let step = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        let mut s = self.state.lock().await;
        if let Some(id) = s.receipts.remove(receipt) {
            if let Some(e) = s.entries.remove(&id) {
                s.by_visibility.remove(&(e.visible_at, id));
                forget_receipts(&mut s.receipts, id, e.receive_count);
            }
        }
        Ok(())
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        let mut s = self.state.lock().await;
        let State {
            entries,
            receipts,
            by_visibility,
            ..
        } = &mut *s;
        if let Some(id) = receipts.get(receipt).copied() {
            if let Some(e) = entries.get_mut(&id) {
                by_visibility.remove(&(e.visible_at, id));
                e.visible_at = Instant::now() + delay;
                by_visibility.insert((e.visible_at, id));
            }
        }
        Ok(())
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut s = self.state.lock().await;
        self.prune(&mut s, self.clock.now());
        Ok(s.dead.iter().take(max).cloned().collect())
    }

    async fn redrive(&self, ids: Option<&[String]>, max: usize) -> Result<Redriven, StoreError> {
        let mut s = self.state.lock().await;
        // A dead letter past its retention is gone: never moved back.
        self.prune(&mut s, self.clock.now());
        let mut moved = Vec::new();
        let mut kept = Vec::new();
        for d in std::mem::take(&mut s.dead) {
            let wanted = ids.is_none_or(|ids| ids.contains(&d.id));
            if wanted && moved.len() < max {
                // Like a SendMessage (and SQS's own redrive): a new message, counted from
                // zero, its retention from now.
                self.push(&mut s, d.body);
                moved.push(d.id);
            } else {
                kept.push(d);
            }
        }
        let more = ids.is_none() && !kept.is_empty();
        s.dead = kept;
        drop(s);
        self.notify.notify_waiters();
        Ok(Redriven {
            moved,
            more,
            unsent: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(got: &[Received]) -> Vec<&str> {
        got.iter().map(|m| m.body.as_str()).collect()
    }

    fn named(range: impl Iterator<Item = usize>) -> Vec<String> {
        range.map(|i| format!("m{i}")).collect()
    }

    /// A clock the test steps by hand.
    struct Stepped(std::sync::Mutex<DateTime<Utc>>);

    impl Stepped {
        fn new() -> Arc<Self> {
            Arc::new(Self(std::sync::Mutex::new(Utc::now())))
        }
        fn step(&self, by: chrono::Duration) {
            if let Ok(mut t) = self.0.lock() {
                *t += by;
            }
        }
    }

    impl Clock for Stepped {
        fn now(&self) -> DateTime<Utc> {
            self.0.lock().map(|t| *t).unwrap_or_else(|_| Utc::now())
        }
    }

    /// The dispatch queue's shape, parking after one receive.
    fn parking_at_once(clock: &Arc<Stepped>) -> MemoryQueue {
        MemoryQueue::shaped(
            QueueShape {
                max_receives: 1,
                ..DISPATCH_QUEUE
            },
            clock.clone(),
        )
    }

    /// Receives everything visible, giving each back at once: with one receive allowed,
    /// the next receive parks them.
    async fn park(q: &MemoryQueue) {
        for _ in 0..2 {
            for m in q.receive(10, Duration::ZERO).await.unwrap() {
                q.retry_after(&m.receipt, Duration::ZERO).await.unwrap();
            }
        }
    }

    fn hours(h: i64) -> chrono::Duration {
        chrono::Duration::hours(h)
    }

    #[tokio::test]
    async fn a_queued_message_older_than_its_queues_retention_is_never_received_and_one_within_it_is(
    ) {
        let clock = Stepped::new();
        let q = MemoryQueue::shaped(DISPATCH_QUEUE, clock.clone());
        q.send("old").await.unwrap();
        q.send("in flight").await.unwrap();
        let first = q.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(bodies(&first), ["old"]);
        q.retry_after(&first[0].receipt, Duration::ZERO)
            .await
            .unwrap();
        let taken = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(bodies(&taken), ["in flight", "old"]);
        let in_flight = taken[0].receipt.clone();
        clock.step(hours(48));
        q.send("young").await.unwrap();
        // The first two are 4 days old exactly: SQS's 345600 s are up.
        clock.step(hours(48));
        q.retry_after(&in_flight, Duration::ZERO).await.unwrap();
        let got = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(
            bodies(&got),
            ["young"],
            "4 days after they were sent, neither the given-back nor the waiting one"
        );
        clock.step(hours(47));
        q.retry_after(&got[0].receipt, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            bodies(&q.receive(10, Duration::ZERO).await.unwrap()),
            ["young"],
            "still within its 4 days"
        );
    }

    #[tokio::test]
    async fn a_dead_letter_older_than_its_retention_from_its_first_enqueue_is_neither_listed_nor_redriven(
    ) {
        let clock = Stepped::new();
        let q = parking_at_once(&clock);
        q.send("first").await.unwrap();
        clock.step(hours(12));
        q.send("second").await.unwrap();
        park(&q).await;
        let parked = q.dead_letters(10).await.unwrap();
        let listed: Vec<&str> = parked.iter().map(|d| d.body.as_str()).collect();
        assert_eq!(listed, ["first", "second"]);
        let (first, second) = (parked[0].id.clone(), parked[1].id.clone());

        // A day after the first was sent (not after it was parked): gone.
        clock.step(hours(12));
        let left = q.dead_letters(10).await.unwrap();
        assert_eq!(
            left.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            [second.as_str()]
        );
        let by_id = q
            .redrive(Some(std::slice::from_ref(&first)), 10)
            .await
            .unwrap();
        assert!(by_id.moved.is_empty(), "{by_id:?}");
        let all = q.redrive(None, 10).await.unwrap();
        assert_eq!(all.moved, [second]);
        assert!(!all.more);

        // The redriven one is a new message: 4 more days on the queue, though it was first
        // sent 12 hours before the redrive.
        clock.step(hours(4 * 24 - 1));
        assert_eq!(
            bodies(&q.receive(10, Duration::ZERO).await.unwrap()),
            ["second"]
        );
    }

    #[tokio::test]
    async fn a_message_parked_after_its_dead_letter_retention_is_gone_at_once() {
        let clock = Stepped::new();
        let q = parking_at_once(&clock);
        q.send("slow").await.unwrap();
        for m in q.receive(10, Duration::ZERO).await.unwrap() {
            q.retry_after(&m.receipt, Duration::ZERO).await.unwrap();
        }
        // A day and more on the queue, then its receive limit: parked and over its day.
        clock.step(hours(25));
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        assert!(q.dead_letters(10).await.unwrap().is_empty());
        let redriven = q.redrive(None, 10).await.unwrap();
        assert!(redriven.moved.is_empty(), "{redriven:?}");
    }

    #[tokio::test]
    async fn a_receive_takes_the_oldest_visible_messages_past_hidden_ones_and_a_delete_takes_only_its_own(
    ) {
        let q = MemoryQueue::new(Duration::from_secs(30), 10);
        q.send_delayed("later", Duration::from_secs(60))
            .await
            .unwrap();
        for i in 0..40 {
            q.send(&format!("m{i}")).await.unwrap();
        }
        let first = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(
            bodies(&first),
            named(0..10),
            "the oldest, past a delayed one"
        );
        let second = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(bodies(&second), named(10..20), "past the ones in flight");

        // Every other one deleted, the rest given back: only the deleted ones go.
        let taken: Vec<&Received> = first.iter().chain(&second).collect();
        for m in taken.iter().step_by(2) {
            q.delete(&m.receipt).await.unwrap();
        }
        for m in taken.iter().skip(1).step_by(2) {
            q.retry_after(&m.receipt, Duration::ZERO).await.unwrap();
        }
        let rest = q.receive(100, Duration::ZERO).await.unwrap();
        let given_back = named((1..20).step_by(2));
        let never_taken = named(20..40);
        assert_eq!(
            bodies(&rest),
            never_taken
                .iter()
                .chain(&given_back)
                .map(String::as_str)
                .collect::<Vec<_>>(),
            "longest visible first (the never taken since they were sent, the given back \
             since then); the delayed one still hidden"
        );
        assert!(rest[..20].iter().all(|m| m.receive_count == 1));
        assert!(rest[20..].iter().all(|m| m.receive_count == 2));
    }

    #[tokio::test]
    async fn a_delayed_batch_stays_hidden_behind_later_sends_until_it_is_due() {
        let q = MemoryQueue::new(Duration::from_secs(30), 10);
        q.send_batch_delayed(&named(0..5), Duration::from_millis(300))
            .await
            .unwrap();
        q.send_batch(&named(5..8)).await.unwrap();
        let now = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(bodies(&now), named(5..8), "only the undelayed ones");
        let later = q.receive(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            bodies(&later),
            named(0..5),
            "the delayed batch, whole, once due"
        );
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    }
}
