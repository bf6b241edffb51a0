//! An in-process queue with SQS's semantics where they matter: visibility timeouts,
//! receive counts, and a dead-letter list after the receive limit.

use std::collections::HashMap;
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
    entries: HashMap<u64, Entry>,
    order: Vec<u64>,
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
        state.order.push(key);
    }

    fn take_visible(&self, state: &mut State, max: usize) -> Vec<Received> {
        let now = Instant::now();
        let mut out = Vec::new();
        let ids: Vec<u64> = state.order.clone();
        for id in ids {
            if out.len() >= max {
                break;
            }
            let Some(entry) = state.entries.get_mut(&id) else {
                continue;
            };
            if entry.visible_at > now {
                continue;
            }
            if entry.receive_count >= self.max_receives {
                // Redrive: like SQS, at receive time.
                if let Some(e) = state.entries.remove(&id) {
                    state.dead.push(DeadLetter {
                        id: e.id,
                        body: e.body,
                        receive_count: e.receive_count,
                        sent_at: e.sent_at,
                    });
                }
                state.order.retain(|x| *x != id);
                continue;
            }
            entry.receive_count += 1;
            entry.visible_at = now + self.visibility;
            let receipt = format!("{id}-{}", entry.receive_count);
            out.push(Received {
                receipt: receipt.clone(),
                body: entry.body.clone(),
                receive_count: entry.receive_count,
            });
            state.receipts.insert(receipt, id);
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
        let mut s = self.state.lock().await;
        Self::push_at(&mut s, body.to_owned(), Instant::now() + delay);
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
            s.entries.remove(&id);
            s.order.retain(|x| *x != id);
        }
        Ok(())
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        let mut s = self.state.lock().await;
        if let Some(id) = s.receipts.get(receipt).copied() {
            if let Some(e) = s.entries.get_mut(&id) {
                e.visible_at = Instant::now() + delay;
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
        Ok(Redriven { moved, more })
    }
}
