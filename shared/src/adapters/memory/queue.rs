//! An in-process queue with SQS's semantics where they matter: visibility timeouts,
//! receive counts, and a dead-letter list after the receive limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, Notify};

use crate::ports::{DeadLetter, DispatchQueue, Received, Redriven};
use crate::store_error::StoreError;

struct Entry {
    /// Its message id, as SQS would give it (kept when it is dead-lettered).
    id: String,
    body: String,
    visible_at: Instant,
    receive_count: u32,
    sent_at: DateTime<Utc>,
}

/// An SQS-like queue: received messages stay hidden for the visibility timeout and come
/// back unless deleted; after `max_receives` receives a message moves to the dead letters.
pub struct MemoryQueue {
    state: Mutex<State>,
    notify: Notify,
    visibility: Duration,
    max_receives: u32,
}

#[derive(Default)]
struct State {
    next: u64,
    /// By the order they were sent in (keys only grow): a delete is one removal. (A list
    /// of the keys beside a hash map was copied whole on every receive and searched on
    /// every delete: with a backlog, such as a send load or a campaign queued faster than
    /// the number's rate, each cost the whole queue under the lock the sends wait on.)
    entries: BTreeMap<u64, Entry>,
    /// Every entry once, by when it is visible (then by key): a receive takes from the
    /// front and stops at the first still hidden, so messages in flight, given back for
    /// later or delayed (a paced campaign's) cost it nothing.
    by_visibility: BTreeSet<(Instant, u64)>,
    receipts: HashMap<String, u64>,
    dead: Vec<DeadLetter>,
}

impl MemoryQueue {
    pub fn new(visibility: Duration, max_receives: u32) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            visibility,
            max_receives,
        }
    }

    fn push(state: &mut State, body: String) {
        Self::push_at(state, body, Instant::now())
    }

    fn push_at(state: &mut State, body: String, visible_at: Instant) {
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
                sent_at: Utc::now(),
            },
        );
    }

    /// Up to `max` visible messages, longest visible first, each hidden for the visibility
    /// timeout; one received `max_receives` times already moves to the dead letters
    /// instead.
    fn take_visible(&self, state: &mut State, max: usize) -> Vec<Received> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut spent = Vec::new();
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
        for id in spent {
            if let Some(e) = state.entries.remove(&id) {
                state.dead.push(DeadLetter {
                    id: e.id,
                    body: e.body,
                    receive_count: e.receive_count,
                    sent_at: e.sent_at,
                });
            }
        }
        out
    }
}

#[async_trait]
impl DispatchQueue for MemoryQueue {
    async fn send(&self, body: &str) -> Result<(), StoreError> {
        let mut s = self.state.lock().await;
        Self::push(&mut s, body.to_owned());
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
            Self::push_at(&mut s, body.clone(), at);
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
        let s = self.state.lock().await;
        Ok(s.dead.iter().take(max).cloned().collect())
    }

    async fn redrive(&self, ids: Option<&[String]>, max: usize) -> Result<Redriven, StoreError> {
        let mut s = self.state.lock().await;
        let mut moved = Vec::new();
        let mut kept = Vec::new();
        for d in std::mem::take(&mut s.dead) {
            let wanted = ids.is_none_or(|ids| ids.contains(&d.id));
            if wanted && moved.len() < max {
                // Like a SendMessage: a new message, counted from zero.
                Self::push(&mut s, d.body);
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
