//! An in-process queue with SQS's semantics where they matter: visibility timeouts,
//! receive counts, and a dead-letter list after the receive limit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Mutex, Notify};

use crate::ports::{DispatchQueue, Received};
use crate::store_error::StoreError;

struct Entry {
    body: String,
    visible_at: Instant,
    receive_count: u32,
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
    dead: Vec<String>,
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
                    state.dead.push(e.body);
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
        s.next += 1;
        let id = s.next;
        s.entries.insert(
            id,
            Entry {
                body: body.to_owned(),
                visible_at: Instant::now(),
                receive_count: 0,
            },
        );
        s.order.push(id);
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

    async fn dead_letters(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.state.lock().await.dead.clone())
    }
}
