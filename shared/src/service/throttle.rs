//! Per-number throughput: every dispatcher takes a send slot of the business phone
//! number before it calls Meta, so all of them together stay under the number's tier.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::domain::TenantId;
use crate::metrics;
use crate::ports::{slot_interval_micros, Tenant, THROUGHPUT_TIERS};
use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::Deps;

/// The longest a dispatcher waits in-process for a slot; beyond it the message goes back
/// to the queue (`RetryAfter`), uncounted as an attempt, carrying the slot reserved for it
/// (`Slot::Later`).
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// How far ahead a slot is reserved for a message when the number is taken for longer
/// than `MAX_WAIT`: the message gives its claim back and comes back for that slot, once,
/// instead of asking again every second or two while the number is busy (each time a
/// claim, a refused slot write and a release). Beyond it the number is full (`Slot::Full`).
pub const HORIZON: Duration = Duration::from_secs(900);

/// A carried slot missed by more than this (its message came back late) is not used: a
/// send then would fall between other messages' slots, and several late together would
/// crowd a later second of Meta's past its tier. The pacing's own margin (`PACING`): at
/// most about as many late sends as a second's pace leaves spare (3 at tier 80, 1 at 20,
/// 30 at 1000).
pub const CARRY_TOLERANCE: Duration = Duration::from_millis(30);

/// The longest a dispatcher waits in-process for a slot carried to it: a message comes
/// back one to two seconds before its slot (`until_slot`), since Lambda's event source may
/// hold a visible message for its batching window (`MaximumBatchingWindowInSeconds: 1`)
/// before handing it over, and a message that came back late would miss its slot.
pub const CARRIED_WAIT: Duration = Duration::from_secs(2);

/// Slots are paced at this share of the tier. Meta counts a rolling second on its own
/// clock; evenly spaced sends at 97% of the tier leave ~30 ms for network jitter before
/// two sends could fall into one of Meta's seconds with one too many (130429).
pub const PACING: f64 = 0.97;

/// The operator's tier for the tenant (messages per second), for numbers Meta said
/// nothing of.
pub fn tier(deps: &Deps, tenant: &Tenant) -> u32 {
    tenant
        .throughput_per_sec
        .unwrap_or(deps.settings.meta_throughput)
}

/// The pace the limiter keeps for a tier.
pub fn pace(tier: u32) -> u32 {
    ((f64::from(tier) * PACING).floor() as u32).max(1)
}

/// Whether the dispatcher may call Meta now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot was taken (after waiting for it, if it lay ahead).
    Go,
    /// The message's slot lies further ahead than `MAX_WAIT`, at this time: it comes back
    /// for it (`MessageRecord::carried_slot`).
    Later(DateTime<Utc>),
    /// The number is taken for longer than `HORIZON`.
    Full,
}

/// Takes the next send slot of the business number `phone_number_id` (whose tier is
/// `tier`, `numbers::tier`), or the slot `carried` (reserved for this message before and
/// not yet missed), and waits for it if it starts within `MAX_WAIT`. Inside [`pooled`]
/// (one dispatcher batch), the batch's messages for one number share their reservations
/// (see there).
///
/// A wait that wakes more than `CARRY_TOLERANCE` past its slot (the process stalled: CPU
/// starved, the batch's task busy) leaves that slot as a carried slot missed is left, for
/// a fresh one: sent then, it would go out with the next slots' sends, and a batch's
/// messages stalled together would crowd one of Meta's seconds past the tier. Once: a
/// process that stalls again on that wait sends (each fresh slot is a write and a slot of
/// the number's second given up).
pub async fn acquire(
    deps: &Deps,
    phone_number_id: &str,
    tier: u32,
    carried: Option<DateTime<Utc>>,
) -> Result<Slot, StoreError> {
    let missed = |at: &DateTime<Utc>| {
        (deps.clock.now() - *at)
            .to_std()
            .is_ok_and(|late| late > CARRY_TOLERANCE)
    };
    let mut carried = carried;
    let mut woke_late = false;
    loop {
        let (at, longest) = match carried.filter(|at| !missed(at)) {
            Some(at) => (at, CARRIED_WAIT),
            None => {
                let Some(at) = take_slot(deps, phone_number_id, pace(tier)).await? else {
                    metrics::throttle("limiter_full");
                    return Ok(Slot::Full);
                };
                (at, MAX_WAIT)
            }
        };
        if let Ok(wait) = (at - deps.clock.now()).to_std() {
            if wait > longest {
                metrics::throttle("limiter_full");
                return Ok(Slot::Later(at));
            }
            if !wait.is_zero() {
                metrics::throttle("limiter_wait");
                tokio::time::sleep(wait).await;
                if !woke_late && missed(&at) {
                    // Missed as a carried slot is: given up above for a fresh one.
                    tracing::debug!("a send slot's wait woke past it: a fresh slot");
                    woke_late = true;
                    carried = Some(at);
                    continue;
                }
            }
        }
        return Ok(Slot::Go);
    }
}

/// How long a message whose slot is at `at` stays away: the whole seconds before it (SQS
/// counts whole seconds) less one, so it comes back one to two seconds early and waits for
/// its slot (at most `CARRIED_WAIT`), even when the event source holds it a second.
pub fn until_slot(deps: &Deps, at: DateTime<Utc>) -> Duration {
    let ahead = (at - deps.clock.now()).to_std().unwrap_or_default();
    Duration::from_secs(ahead.as_secs().saturating_sub(1))
}

/// The time of the send slot reserved for this message (`None`: the number is full for
/// `MAX_WAIT`): on its own outside a batch, through the number's line inside one.
async fn take_slot(
    deps: &Deps,
    phone_number_id: &str,
    per_sec: u32,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let turn = LINES.try_with(|lines| {
        let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
        let line = lines.entry(phone_number_id.to_owned()).or_default();
        if line.busy {
            let (tx, rx) = oneshot::channel();
            line.waiting.push(tx);
            Some(rx)
        } else {
            line.busy = true;
            None
        }
    });
    match turn {
        // Not in a batch: a slot of its own.
        Err(_) => reserve_one(deps, phone_number_id, per_sec).await,
        Ok(None) => lead(deps, phone_number_id, per_sec).await,
        Ok(Some(rx)) => {
            let mut waiting = Waiting {
                phone_number_id,
                rx: Some(rx),
            };
            let told = match waiting.rx.as_mut() {
                Some(rx) => rx.await,
                None => Ok(Turn::Alone),
            };
            waiting.rx = None;
            match told {
                Ok(Turn::Slot(at)) => Ok(Some(at)),
                Ok(Turn::Lead) => lead(deps, phone_number_id, per_sec).await,
                // The run was refused or failed (or its leader is gone): one by one.
                Ok(Turn::Alone) | Err(_) => reserve_one(deps, phone_number_id, per_sec).await,
            }
        }
    }
}

/// A message waiting on its number's line. Dropped while still waiting (its batch cut
/// short, or a caller's timeout): if it had just been told to lead, the line passes on,
/// so no one is left waiting for a leader that is gone.
struct Waiting<'a> {
    phone_number_id: &'a str,
    rx: Option<oneshot::Receiver<Turn>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if let Ok(Turn::Lead) = rx.try_recv() {
                pass_on(self.phone_number_id);
            }
        }
    }
}

/// The line of `phone_number_id` passes to the first message still waiting on it, or
/// stands idle.
fn pass_on(phone_number_id: &str) {
    let _ = LINES.try_with(|lines| {
        let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
        let Some(line) = lines.get_mut(phone_number_id) else {
            return;
        };
        while !line.waiting.is_empty() {
            if line.waiting.remove(0).send(Turn::Lead).is_ok() {
                return;
            }
        }
        line.busy = false;
    });
}

async fn reserve_one(
    deps: &Deps,
    phone_number_id: &str,
    per_sec: u32,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    deps.throughput
        .reserve_slot(phone_number_id, per_sec, deps.clock.now(), HORIZON)
        .await
}

/// What a batch's message waiting on its number's line is told.
enum Turn {
    /// Its slot, reserved in the leader's run.
    Slot(DateTime<Utc>),
    /// Reserve a run for yourself and everyone waiting now.
    Lead,
    /// Reserve a slot of your own.
    Alone,
}

/// One number's line within a batch: whether a reservation is being written, and who
/// waits for the next one.
#[derive(Default)]
struct Line {
    busy: bool,
    waiting: Vec<oneshot::Sender<Turn>>,
}

tokio::task_local! {
    static LINES: Mutex<HashMap<String, Line>>;
}

/// Runs one dispatcher batch (`work`: its messages, handled concurrently in this task)
/// with the reservations of its messages for one number written together: the first
/// to ask reserves its own slot; whoever asks while that write is out waits, and the
/// first of them then reserves one run of slots for all the waiters at once (one write,
/// `Throughput::reserve_slots`), handing each its slot in the run. Ten messages for one
/// number cost two or three writes instead of ten. A run that does not fit within
/// `HORIZON` is refused whole and its messages reserve one by one, as outside a batch
/// (a slot further ahead than `MAX_WAIT` is carried either way): the number's pace is the
/// same either way.
pub async fn pooled<F: Future>(work: F) -> F::Output {
    LINES.scope(Mutex::default(), work).await
}

/// The line's turn: reserve one slot for this message and one for each message waiting
/// now, hand theirs out, and pass the line on.
async fn lead(
    deps: &Deps,
    phone_number_id: &str,
    per_sec: u32,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let mut turn = Leading {
        phone_number_id,
        followers: LINES
            .try_with(|lines| {
                let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                lines
                    .get_mut(phone_number_id)
                    .map(|l| std::mem::take(&mut l.waiting))
                    .unwrap_or_default()
            })
            .unwrap_or_default(),
    };
    let count = u32::try_from(turn.followers.len() + 1).unwrap_or(u32::MAX);
    let res = deps
        .throughput
        .reserve_slots(phone_number_id, per_sec, deps.clock.now(), HORIZON, count)
        .await;
    match res {
        Ok(Some(first)) => {
            let interval = slot_interval_micros(per_sec);
            for (i, f) in std::mem::take(&mut turn.followers).into_iter().enumerate() {
                let offset = interval.saturating_mul(i64::try_from(i + 1).unwrap_or(i64::MAX));
                let _ = f.send(Turn::Slot(first + chrono::Duration::microseconds(offset)));
            }
            drop(turn);
            Ok(Some(first))
        }
        Ok(None) if count > 1 => {
            // Did not fit whole: everyone one by one (the leader too).
            drop(turn);
            reserve_one(deps, phone_number_id, per_sec).await
        }
        other => {
            drop(turn);
            other
        }
    }
}

/// A leader's turn on its line. Dropped (after the write, or if the batch is cut short):
/// followers it did not give a slot reserve on their own, and the line passes to the
/// first message that came while the write was out, or stands idle.
struct Leading<'a> {
    phone_number_id: &'a str,
    followers: Vec<oneshot::Sender<Turn>>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        for f in self.followers.drain(..) {
            let _ = f.send(Turn::Alone);
        }
        pass_on(self.phone_number_id);
    }
}

/// When a message whose number was full comes back: 30 to 60 s, spread out. A full
/// number has more than [`HORIZON`] (15 minutes) of sends booked ahead, so a message cannot
/// be sent sooner by asking sooner; asking every 1-2 s (as before) cost a claim, a refused
/// slot write, a give-back and a queue round trip each time, for every waiting message,
/// and took the dispatcher's few concurrent batches from every other tenant's messages.
pub fn full_retry_delay() -> Duration {
    Duration::from_millis(30_000 + rand::random::<u64>() % 30_000)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThroughputBody {
    #[serde(deserialize_with = "crate::domain::fields::integer")]
    pub per_sec: u32,
}

/// The operator sets a tenant's tier (Meta raised or lowered the number's limit).
pub async fn set_throughput(
    deps: &Deps,
    id: &TenantId,
    body: ThroughputBody,
) -> Result<Tenant, ServiceError> {
    if !THROUGHPUT_TIERS.contains(&body.per_sec) {
        return Err(ServiceError::InvalidRequest(
            "per_sec must be one of Meta's tiers: 20, 80 or 1000".into(),
        ));
    }
    let t = deps.throughput.set_throughput(id, body.per_sec).await?;
    tracing::info!(tenant_id = %id, per_sec = body.per_sec, "throughput tier set");
    Ok(t)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_message_whose_number_is_full_comes_back_in_half_a_minute_to_a_minute() {
        // Over 15 minutes are booked ahead: asking every second or two only churns.
        for _ in 0..200 {
            let d = super::full_retry_delay();
            assert!(
                d >= Duration::from_secs(30) && d < Duration::from_secs(60),
                "{d:?}"
            );
        }
    }
    use super::*;
    use std::sync::Arc;

    use crate::config::Settings;
    use crate::ports::{Clock, Throughput};

    /// A number's slots as a store would give them, each reservation held 5 ms as a
    /// write to DynamoDB is (so that the batch's other messages ask meanwhile), and
    /// recorded: (slots asked, granted).
    struct Recorded {
        refuse_runs: bool,
        fail_runs: bool,
        next: Mutex<i64>,
        calls: Mutex<Vec<(u32, bool)>>,
    }

    impl Recorded {
        fn new(refuse_runs: bool, fail_runs: bool) -> Arc<Self> {
            Arc::new(Recorded {
                refuse_runs,
                fail_runs,
                next: Mutex::new(0),
                calls: Mutex::new(Vec::new()),
            })
        }
        fn calls(&self) -> Vec<(u32, bool)> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
    }

    #[async_trait::async_trait]
    impl Throughput for Recorded {
        async fn reserve_slots(
            &self,
            _key: &str,
            per_sec: u32,
            now: DateTime<Utc>,
            _max_wait: Duration,
            count: u32,
        ) -> Result<Option<DateTime<Utc>>, StoreError> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if count > 1 && self.fail_runs {
                return Err(StoreError::Unavailable("the run's write failed".into()));
            }
            let granted = !(count > 1 && self.refuse_runs);
            self.calls
                .lock()
                .map_err(|_| StoreError::Unavailable("poisoned".into()))?
                .push((count, granted));
            if !granted {
                return Ok(None);
            }
            let mut next = self
                .next
                .lock()
                .map_err(|_| StoreError::Unavailable("poisoned".into()))?;
            let first = (*next).max(now.timestamp_micros());
            *next = first + i64::from(count) * slot_interval_micros(per_sec);
            Ok(Some(crate::ports::micros_to_time(first)))
        }
        async fn set_throughput(
            &self,
            _tenant: &TenantId,
            _per_sec: u32,
        ) -> Result<Tenant, StoreError> {
            Err(StoreError::NotFound)
        }
    }

    /// On a clock that stands still: a wait that wakes late on a loaded machine is never
    /// taken for a stall (which gives its slot up for a fresh one, a reservation more).
    fn deps_with(slots: Arc<Recorded>) -> Deps {
        let mut deps =
            crate::wiring::memory_deps(Settings::default(), Arc::new(Frozen(Utc::now()))).unwrap();
        deps.throughput = slots;
        deps
    }

    /// Ten messages of one batch asking for one number's slots at once.
    async fn ten_in_a_batch(deps: &Deps) -> Vec<Result<Slot, StoreError>> {
        pooled(futures::future::join_all(
            (0..10).map(|_| acquire(deps, "pn1", 80, None)),
        ))
        .await
    }

    #[tokio::test]
    async fn a_batchs_messages_for_one_number_reserve_their_slots_in_two_writes() {
        let slots = Recorded::new(false, false);
        let deps = deps_with(slots.clone());
        let out = ten_in_a_batch(&deps).await;
        assert!(out.iter().all(|r| matches!(r, Ok(Slot::Go))), "{out:?}");
        // The first asks alone; the nine that asked during its write get one run.
        assert_eq!(slots.calls(), vec![(1, true), (9, true)]);
    }

    /// A clock that stands still: a run asked for after the first slot's write starts one
    /// interval after it, however long that write took on a loaded machine (with the
    /// system's clock, a write slower than the interval started the run at its own `now`).
    struct Frozen(chrono::DateTime<chrono::Utc>);

    impl crate::ports::Clock for Frozen {
        fn now(&self) -> chrono::DateTime<chrono::Utc> {
            self.0
        }
    }

    #[tokio::test]
    async fn a_batchs_slots_for_one_number_are_distinct_and_one_interval_apart() {
        let slots = Recorded::new(false, false);
        let mut deps = deps_with(slots.clone());
        deps.clock = Arc::new(Frozen(chrono::Utc::now()));
        let per_sec = pace(80);
        let times = pooled(futures::future::join_all(
            (0..10).map(|_| take_slot(&deps, "pn1", per_sec)),
        ))
        .await;
        let mut us: Vec<i64> = times
            .into_iter()
            .map(|t| t.unwrap().unwrap().timestamp_micros())
            .collect();
        us.sort();
        let gaps: Vec<i64> = us.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, vec![slot_interval_micros(per_sec); 9], "{us:?}");
    }

    #[tokio::test]
    async fn a_message_told_to_lead_and_then_dropped_passes_its_line_on() {
        let slots = Recorded::new(false, false);
        let deps = deps_with(slots.clone());
        let third = pooled(async {
            let mut first = Box::pin(take_slot(&deps, "pn1", 77));
            let mut second = Box::pin(take_slot(&deps, "pn1", 77));
            let mut third = Box::pin(take_slot(&deps, "pn1", 77));
            // The first leads (its write is out); the other two wait on the line.
            assert!(futures::poll!(&mut first).is_pending());
            assert!(futures::poll!(&mut second).is_pending());
            assert!(futures::poll!(&mut third).is_pending());
            // The first's write ends: the second is told to lead, and is dropped unpolled.
            first.await.unwrap();
            drop(second);
            tokio::time::timeout(Duration::from_secs(5), third).await
        })
        .await;
        assert!(
            matches!(third, Ok(Ok(Some(_)))),
            "the third still got its slot: {third:?}"
        );
    }

    #[tokio::test]
    async fn outside_a_batch_each_message_reserves_its_own_slot() {
        let slots = Recorded::new(false, false);
        let deps = deps_with(slots.clone());
        let out = futures::future::join_all((0..4).map(|_| acquire(&deps, "pn1", 80, None))).await;
        assert!(out.iter().all(|r| matches!(r, Ok(Slot::Go))));
        assert_eq!(slots.calls(), vec![(1, true); 4]);
    }

    #[tokio::test]
    async fn a_refused_run_leaves_its_messages_to_reserve_one_by_one() {
        let slots = Recorded::new(true, false);
        let deps = deps_with(slots.clone());
        let out = ten_in_a_batch(&deps).await;
        assert!(out.iter().all(|r| matches!(r, Ok(Slot::Go))), "{out:?}");
        let calls = slots.calls();
        assert_eq!(calls[..2], [(1, true), (9, false)]);
        assert_eq!(calls[2..], [(1, true); 9], "each of the nine on its own");
    }

    #[tokio::test]
    async fn a_failed_run_leaves_its_messages_to_reserve_one_by_one() {
        let slots = Recorded::new(false, true);
        let deps = deps_with(slots.clone());
        let out = ten_in_a_batch(&deps).await;
        // The run's leader reports the failure (its message goes back to the queue);
        // the eight it reserved for try alone.
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1, "{out:?}");
        assert_eq!(out.iter().filter(|r| matches!(r, Ok(Slot::Go))).count(), 9);
        assert_eq!(slots.calls(), vec![(1, true); 9]);
    }

    #[tokio::test]
    async fn numbers_in_one_batch_keep_lines_of_their_own() {
        let slots = Recorded::new(false, false);
        let deps = deps_with(slots.clone());
        let out = pooled(futures::future::join_all((0..6).map(|i| {
            acquire(&deps, if i % 2 == 0 { "pn1" } else { "pn2" }, 80, None)
        })))
        .await;
        assert!(out.iter().all(|r| matches!(r, Ok(Slot::Go))));
        let mut calls = slots.calls();
        calls.sort();
        assert_eq!(calls, vec![(1, true), (1, true), (2, true), (2, true)]);
    }

    #[tokio::test]
    async fn a_slot_further_ahead_than_the_wait_is_kept_for_the_message_to_come_back_for() {
        let slots = Recorded::new(false, false);
        // The number taken for five seconds ahead.
        *slots.next.lock().unwrap() = Utc::now().timestamp_micros() + 5_000_000;
        let deps = deps_with(slots.clone());
        let Ok(Slot::Later(at)) = acquire(&deps, "pn1", 80, None).await else {
            panic!("the slot five seconds ahead is not kept for the message")
        };
        let ahead = (at - Utc::now()).to_std().unwrap();
        assert!(
            ahead > MAX_WAIT && ahead <= Duration::from_secs(5),
            "{ahead:?}"
        );
        let away = until_slot(&deps, at);
        assert!(
            away + Duration::from_secs(1) <= ahead && away + CARRIED_WAIT > ahead,
            "back one to two seconds before its slot: {away:?} for {ahead:?}"
        );
        assert_eq!(away.subsec_nanos(), 0, "whole seconds");
        assert_eq!(slots.calls(), vec![(1, true)], "one reservation");
    }

    #[tokio::test]
    async fn a_carried_slot_is_used_without_reserving_again_unless_it_was_missed() {
        let slots = Recorded::new(false, false);
        let deps = deps_with(slots.clone());
        let now = deps.clock.now();
        let soon = now + chrono::Duration::milliseconds(50);
        assert_eq!(
            acquire(&deps, "pn1", 80, Some(soon)).await.unwrap(),
            Slot::Go
        );
        assert!(slots.calls().is_empty(), "its own slot: no reservation");
        // Back early, as `until_slot` brings it: it waits in-process for its own slot,
        // longer than a fresh reservation would.
        let early = now + chrono::Duration::milliseconds(1_500);
        assert_eq!(
            acquire(&deps, "pn1", 80, Some(early)).await.unwrap(),
            Slot::Go,
            "a fresh slot this far ahead would be `Later`"
        );
        assert!(slots.calls().is_empty());
        let far = now + chrono::Duration::seconds(3);
        assert_eq!(
            acquire(&deps, "pn1", 80, Some(far)).await.unwrap(),
            Slot::Later(far),
            "back too early: the same slot, later"
        );
        assert!(slots.calls().is_empty());
        // Late by more than the pacing's margin: not used (a send now would crowd a later
        // second), a new slot instead.
        let missed = now - chrono::Duration::milliseconds(100);
        assert_eq!(
            acquire(&deps, "pn1", 80, Some(missed)).await.unwrap(),
            Slot::Go
        );
        assert_eq!(slots.calls(), vec![(1, true)], "a missed slot: a new one");
    }

    /// The system's clock, put forward by `stall` while a test's wait sleeps: the process
    /// as if it had stood still that long (its sleep woke that late).
    struct Stalling {
        stall: Mutex<chrono::Duration>,
    }

    impl Stalling {
        fn stall(&self, by: chrono::Duration) {
            if let Ok(mut s) = self.stall.lock() {
                *s += by;
            }
        }
    }

    impl crate::ports::Clock for Stalling {
        fn now(&self) -> DateTime<Utc> {
            Utc::now() + self.stall.lock().map(|s| *s).unwrap_or_default()
        }
    }

    /// Polls `acquire` until it sleeps for its slot (`reservations` made by then), and
    /// puts the clock 300 ms on meanwhile: it wakes 300 ms past the slot.
    async fn stalled_in_its_wait<F: Future<Output = Result<Slot, StoreError>>>(
        acquire: &mut std::pin::Pin<&mut F>,
        slots: &Recorded,
        clock: &Stalling,
        reservations: usize,
    ) {
        loop {
            assert!(
                futures::poll!(acquire.as_mut()).is_pending(),
                "still waiting"
            );
            if slots.calls().len() == reservations {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        clock.stall(chrono::Duration::milliseconds(300));
    }

    #[tokio::test]
    async fn a_wait_that_wakes_well_past_its_slot_takes_a_fresh_slot_as_a_missed_carried_one_does()
    {
        let slots = Recorded::new(false, false);
        let clock = Arc::new(Stalling {
            stall: Mutex::default(),
        });
        let mut deps = deps_with(slots.clone());
        deps.clock = clock.clone();
        // A carried slot 1 s on (`CARRIED_WAIT` is 2 s): no reservation, a wait; the process
        // stalls 300 ms in it. Waits of most of a second, so that a loaded machine's own
        // stalls between the test's polls do not end the wait before the 300 ms are added.
        let soon = clock.now() + chrono::Duration::milliseconds(1_000);
        {
            let mut waiting = std::pin::pin!(acquire(&deps, "pn1", 80, Some(soon)));
            stalled_in_its_wait(&mut waiting, &slots, &clock, 0).await;
            assert_eq!(waiting.await.unwrap(), Slot::Go);
        }
        assert_eq!(
            slots.calls(),
            vec![(1, true)],
            "300 ms past its slot on waking: a fresh one, not a send among the next slots'"
        );
        // A slot reserved fresh (the number taken 800 ms ahead, `MAX_WAIT` is 1 s) whose wait
        // stalls: the same, a second reservation.
        let slots = Recorded::new(false, false);
        *slots.next.lock().unwrap() =
            (clock.now() + chrono::Duration::milliseconds(800)).timestamp_micros();
        deps.throughput = slots.clone();
        let mut waiting = std::pin::pin!(acquire(&deps, "pn1", 80, None));
        stalled_in_its_wait(&mut waiting, &slots, &clock, 1).await;
        assert_eq!(waiting.await.unwrap(), Slot::Go);
        assert_eq!(slots.calls(), vec![(1, true), (1, true)]);
    }

    #[tokio::test]
    async fn a_wait_that_wakes_past_its_slot_twice_sends_on_its_second_slot_without_a_third() {
        let slots = Recorded::new(false, false);
        let clock = Arc::new(Stalling {
            stall: Mutex::default(),
        });
        let mut deps = deps_with(slots.clone());
        deps.clock = clock.clone();
        // A carried slot 1 s on; its fresh slot, taken on waking 300 ms past it (1.3 s on
        // the stalled clock), lies 0.7 s further: another wait, which stalls too.
        *slots.next.lock().unwrap() =
            (clock.now() + chrono::Duration::milliseconds(2_000)).timestamp_micros();
        let soon = clock.now() + chrono::Duration::milliseconds(1_000);
        let mut waiting = std::pin::pin!(acquire(&deps, "pn1", 80, Some(soon)));
        stalled_in_its_wait(&mut waiting, &slots, &clock, 0).await;
        stalled_in_its_wait(&mut waiting, &slots, &clock, 1).await;
        assert_eq!(waiting.await.unwrap(), Slot::Go);
        assert_eq!(
            slots.calls(),
            vec![(1, true)],
            "one fresh slot, not slot after slot"
        );
    }

    #[test]
    fn each_tier_is_paced_a_little_below_its_limit() {
        assert_eq!(pace(20), 19);
        assert_eq!(pace(80), 77);
        assert_eq!(pace(1000), 970);
        assert_eq!(pace(0), 1);
    }
}
