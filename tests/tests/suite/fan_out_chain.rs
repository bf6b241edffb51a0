//! A broadcast's fan-out is a chain of queue jobs, each queueing the one after it. SQS
//! delivers at least once: a job delivered twice (its delete lost, or retried after its run
//! timed out) queued two next jobs, and two chains ran from then on, each slice recorded
//! and queued twice. Each job carries the broadcast's fan-out token, and a run's last
//! progress write moves it on (`ports::FanoutHop`): of two deliveries of one job, one
//! queues the next job. On both backends, the jobs delivered by hand from a queue that
//! keeps them.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kirim::config::Backend;
use kirim::domain::{PhoneNumber, TenantId};
use kirim::ports::*;
use kirim::service::jobs::{FanoutJob, Outcome, QueueJob};
use kirim::service::{broadcasts, dispatch, Deps};
use kirim::store_error::StoreError;
use kirim_tests::{spawn_app, TestApp};
use serde_json::json;

/// Recipients fanned out per job in these tests: four slices of the campaign's twelve.
const SLICE: usize = 3;
const RECIPIENTS: usize = 15;

/// A queue that keeps every job it is given, for the test to deliver by hand; it may refuse
/// the next fan-out job once (the queue down for a moment).
#[derive(Default)]
struct Shelf {
    bodies: Mutex<Vec<String>>,
    refuse_next_fan_out: AtomicBool,
}

impl Shelf {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.bodies.lock().unwrap())
    }
}

/// The fan-out jobs of `bodies`, and their dispatch jobs.
fn by_kind(bodies: &[String]) -> (Vec<FanoutJob>, Vec<String>) {
    let mut fan_outs = Vec::new();
    let mut sends = Vec::new();
    for b in bodies {
        match QueueJob::parse(b) {
            Some(QueueJob::BroadcastFanout(j)) => fan_outs.push(j),
            Some(QueueJob::Send(_)) => sends.push(b.clone()),
            other => panic!("an unexpected job: {other:?}"),
        }
    }
    (fan_outs, sends)
}

#[async_trait]
impl DispatchQueue for Shelf {
    async fn send(&self, body: &str) -> Result<(), StoreError> {
        if matches!(QueueJob::parse(body), Some(QueueJob::BroadcastFanout(_)))
            && self.refuse_next_fan_out.swap(false, SeqCst)
        {
            return Err(StoreError::Unavailable("the queue blinked".into()));
        }
        self.bodies.lock().unwrap().push(body.to_owned());
        Ok(())
    }
    async fn receive(&self, _max: usize, _wait: Duration) -> Result<Vec<Received>, StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn retry_after(&self, _receipt: &str, _delay: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn dead_letters(&self, _max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(Vec::new())
    }
    async fn redrive(&self, _ids: Option<&[String]>, _max: usize) -> Result<Redriven, StoreError> {
        Ok(Redriven::default())
    }
}

/// The broadcast store with what a test arranges: a campaign accepted before fan-out tokens
/// (its broadcast written without one); a run's progress write held until the test lets it
/// go (the other delivery of its job runs meanwhile); a run's last progress write landing
/// with its answer lost (the SDK's retry of it is what the run hears).
struct Arranged {
    inner: Arc<dyn BroadcastStore>,
    untokened: bool,
    hold: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::sync::oneshot::Receiver<()>,
        )>,
    >,
    lose_last_answers: bool,
}

impl Arranged {
    fn over(inner: Arc<dyn BroadcastStore>) -> Self {
        Arranged {
            inner,
            untokened: false,
            hold: Mutex::new(None),
            lose_last_answers: false,
        }
    }
}

kirim_tests::pass_through! {
    impl BroadcastStore for Arranged {
        async fn create_broadcast(
            &self,
            broadcast: &Broadcast,
            recipients: &[PhoneNumber],
            debit: &LedgerEntry,
        ) -> Result<(), StoreError> {
            let mut b = broadcast.clone();
            if self.untokened {
                b.fanout_token = None;
            }
            self.inner.create_broadcast(&b, recipients, debit).await
        }
        async fn broadcast_progress(
            &self,
            tenant: &TenantId,
            id: &str,
            enqueued: usize,
            done: bool,
            hop: FanoutHop<'_>,
        ) -> Result<bool, StoreError> {
            let held = self.hold.lock().unwrap().take();
            if let Some((arrived, go)) = held {
                let _ = arrived.send(());
                let _ = go.await;
            }
            if self.lose_last_answers && hop.next.is_some() {
                self.inner
                    .broadcast_progress(tenant, id, enqueued, done, hop)
                    .await?;
            }
            self.inner
                .broadcast_progress(tenant, id, enqueued, done, hop)
                .await
        }
        async fn broadcast_tally_consistent(
            &self,
            broadcast: &Broadcast,
        ) -> Result<BroadcastTally, StoreError> {
            self.inner.broadcast_tally_consistent(broadcast).await
        }
    }
}

/// A tenant's campaign of [`RECIPIENTS`], accepted through `arranged` (its store, the app's
/// own behind it), its fan-out jobs kept on a [`Shelf`].
struct Campaign {
    app: TestApp,
    deps: Deps,
    store: Arc<Arranged>,
    shelf: Arc<Shelf>,
    tenant: TenantId,
    id: String,
    recipients: Vec<String>,
    /// The first fan-out job, as queued.
    first: String,
}

async fn campaign(b: Backend, arrange: impl FnOnce(&mut Arranged)) -> Campaign {
    let app = spawn_app(b).await;
    let o = app.onboard(50).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let shelf = Arc::new(Shelf::default());
    let mut arranged = Arranged::over(app.app.deps.broadcasts.clone());
    arrange(&mut arranged);
    let store = Arc::new(arranged);
    let mut deps = app.app.deps.clone();
    deps.queue = shelf.clone();
    deps.broadcasts = store.clone();
    let recipients: Vec<String> = (0..RECIPIENTS)
        .map(|i| format!("+6012345{:04}", 7100 + i))
        .collect();
    let template = serde_json::from_value(json!({"name": "order_update", "language": "en_US",
        "category": "utility",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]}))
    .unwrap();
    let accepted = broadcasts::create(&deps, &tenant, template, recipients.clone(), None)
        .await
        .unwrap();
    let mut queued = shelf.take();
    assert_eq!(queued.len(), 1, "its first fan-out job");
    Campaign {
        app,
        deps,
        store,
        shelf,
        tenant,
        id: accepted.id,
        recipients,
        first: queued.remove(0),
    }
}

impl Campaign {
    /// One delivery of `job`: answers the fan-out jobs and the dispatch jobs it queued.
    async fn run(&self, job: &FanoutJob) -> (Vec<FanoutJob>, Vec<String>) {
        let outcome = broadcasts::fan_out_in_slices(&self.deps, job, SLICE)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Done);
        by_kind(&self.shelf.take())
    }

    /// Runs every fan-out job from `pending` on, and every dispatch job, until none is left;
    /// then checks the campaign completed with every recipient queued and sent once.
    async fn complete(&self, mut pending: Vec<FanoutJob>, mut sends: Vec<String>) {
        let mut hops = 0;
        while let Some(job) = pending.pop() {
            let (more, queued) = self.run(&job).await;
            pending.extend(more);
            sends.extend(queued);
            hops += 1;
            assert!(hops < 50, "the chain does not end");
        }
        for body in &sends {
            let mut outcome = dispatch::handle(&self.deps, body).await;
            for _ in 0..50 {
                if outcome == Outcome::Done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                outcome = dispatch::handle(&self.deps, body).await;
            }
            assert_eq!(outcome, Outcome::Done, "{body}");
        }
        self.shelf.take();
        let view = broadcasts::view(&self.deps, &self.tenant, &self.id)
            .await
            .unwrap();
        let handed: usize = ["sent", "delivered", "read"]
            .iter()
            .map(|s| view.counts[*s])
            .sum();
        assert_eq!(
            (view.status, view.enqueued, view.total, handed),
            ("completed", RECIPIENTS, RECIPIENTS, RECIPIENTS),
            "{view:?}"
        );
        for r in &self.recipients {
            assert_eq!(
                self.app
                    .sandbox_requests_to(r.trim_start_matches('+'))
                    .len(),
                1,
                "{r}: sent once"
            );
        }
    }

    /// The fan-out job of the queued body `body`.
    fn job(body: &str) -> FanoutJob {
        match QueueJob::parse(body) {
            Some(QueueJob::BroadcastFanout(j)) => j,
            other => panic!("not a fan-out job: {other:?}"),
        }
    }
}

/// The same mid-chain job delivered twice, one delivery after the other: the second finds
/// the chain moved on and records and queues nothing, so one next job carries the fan-out on
/// (two did: two chains from then on, every slice recorded and queued twice).
async fn a_fan_out_job_delivered_twice_in_turn_queues_one_next_job(b: Backend) {
    let c = campaign(b, |_| {}).await;
    let (next, sends) = c.run(&Campaign::job(&c.first)).await;
    assert_eq!((next.len(), sends.len()), (1, SLICE));
    let mid = next[0].clone();
    let (first_next, first_sends) = c.run(&mid).await;
    let (again_next, again_sends) = c.run(&mid).await;
    assert_eq!(first_next.len(), 1, "the next job");
    assert_eq!(again_sends.len(), 0, "the second delivery records nothing");
    // It cannot know whether the first's next job was queued: it queues it again, marked,
    // late; run after the first moved the chain on, that copy queues nothing.
    assert_the_copy_of(&again_next, &first_next[0]);
    let (after_next, after_sends) = c.run(&first_next[0]).await;
    let (copy_next, copy_sends) = c.run(&again_next[0]).await;
    assert_eq!(
        (copy_next.len(), copy_sends.len()),
        (0, 0),
        "the copy, late, queues nothing"
    );
    let mut all = sends;
    all.extend(first_sends);
    all.extend(after_sends);
    c.complete(after_next, all).await;
}

/// `copies` is one job: `original` queued again by a duplicate delivery of the job
/// before it (marked, carrying the same token).
fn assert_the_copy_of(copies: &[FanoutJob], original: &FanoutJob) {
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].resent, "marked as queued again");
    assert!(!original.resent);
    assert_eq!(
        copies[0].token, original.token,
        "the same place in the chain"
    );
}

/// A run that died between its last progress write (which moved the chain on) and the
/// send of its next job: the redelivery of its job finds the chain moved on by its own
/// write and queues the next job again, so the campaign goes on (it stalled until its
/// list's backstop, 7 days, and its unsent recipients were refunded), and the copy queued
/// again is not queued again by its own duplicates.
async fn a_fan_out_run_that_died_before_queueing_its_next_job_is_carried_on_by_its_redelivery(
    b: Backend,
) {
    let c = campaign(b, |_| {}).await;
    let (next, sends) = c.run(&Campaign::job(&c.first)).await;
    let mid = next[0].clone();
    let (lost_next, mid_sends) = c.run(&mid).await;
    assert_eq!(lost_next.len(), 1, "queued, then lost with its process");
    let (again_next, again_sends) = c.run(&mid).await;
    assert_eq!(again_sends.len(), 0, "the redelivery records nothing again");
    assert_the_copy_of(&again_next, &lost_next[0]);
    // The copy delivered twice: the second finds the chain moved on by the first and,
    // being a copy, queues nothing.
    let (copy_next, copy_sends) = c.run(&again_next[0]).await;
    let (dup_next, dup_sends) = c.run(&again_next[0]).await;
    assert_eq!(
        (copy_next.len(), dup_next.len(), dup_sends.len()),
        (1, 0, 0)
    );
    // The job the copy queued is the chain's own: should its run die the same way, its
    // redelivery queues its next job again too (the copy's mark is not handed down).
    assert!(!copy_next[0].resent, "{:?}", copy_next[0]);
    let (lost_again, later_sends) = c.run(&copy_next[0]).await;
    assert_eq!(lost_again.len(), 1, "queued, then lost with its process");
    let (again_later, _) = c.run(&copy_next[0]).await;
    assert_the_copy_of(&again_later, &lost_again[0]);
    let mut all = sends;
    all.extend(mid_sends);
    all.extend(copy_sends);
    all.extend(later_sends);
    c.complete(again_later, all).await;
}

/// The same mid-chain job delivered twice at once: the second delivery runs its slice
/// while the first has recorded and queued its own and not yet written its progress. Of
/// the two progress writes, one moves the chain on and queues the next job; the other is
/// refused and queues none.
async fn a_fan_out_job_delivered_twice_at_once_queues_one_next_job(b: Backend) {
    let c = campaign(b, |_| {}).await;
    let (next, sends) = c.run(&Campaign::job(&c.first)).await;
    let mid = next[0].clone();
    let (arrived, held) = tokio::sync::oneshot::channel();
    let (go, wait) = tokio::sync::oneshot::channel();
    *c.store.hold.lock().unwrap() = Some((arrived, wait));
    let first = {
        let (deps, mid) = (c.deps.clone(), mid.clone());
        tokio::spawn(async move { broadcasts::fan_out_in_slices(&deps, &mid, SLICE).await })
    };
    held.await.unwrap();
    // The first delivery's slice is recorded and queued, its progress write waits.
    let (_, first_sends) = by_kind(&c.shelf.take());
    assert_eq!(first_sends.len(), SLICE);
    let (second_next, _) = c.run(&mid).await;
    go.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), Outcome::Done);
    let (first_next, _) = by_kind(&c.shelf.take());
    assert_eq!(
        second_next.len() + first_next.len(),
        1,
        "one next job between the two deliveries"
    );
    let mut all = sends;
    all.extend(first_sends);
    c.complete([second_next, first_next].concat(), all).await;
}

/// A campaign accepted before fan-out tokens (its broadcast without one, its job too)
/// still fans out whole, and its job delivered twice queues one next job.
async fn a_fan_out_job_from_before_tokens_completes_its_campaign_once(b: Backend) {
    let c = campaign(b, |a| a.untokened = true).await;
    let mut first: serde_json::Value = serde_json::from_str(&c.first).unwrap();
    assert!(first.get("token").is_some(), "queued with a token now");
    first.as_object_mut().unwrap().remove("token");
    let old = Campaign::job(&first.to_string());
    assert_eq!(old.token, None);
    let (next, sends) = c.run(&old).await;
    let (again_next, again_sends) = c.run(&old).await;
    assert_eq!(next.len(), 1, "the next job");
    assert_eq!(again_sends.len(), 0, "the second delivery records nothing");
    assert_the_copy_of(&again_next, &next[0]);
    let (after_next, after_sends) = c.run(&next[0]).await;
    let (copy_next, copy_sends) = c.run(&again_next[0]).await;
    assert_eq!((copy_next.len(), copy_sends.len()), (0, 0));
    let mut all = sends;
    all.extend(after_sends);
    c.complete(after_next, all).await;
}

/// A deploy under way (or a rollback): an instance of the code before tokens ran a
/// campaign's slice and queued its next job without a token, the broadcast keeping one.
/// That job takes the broadcast's token and the campaign goes on (dropped as a duplicate,
/// it waited for its list's 7-day backstop and its unsent recipients were refunded).
async fn a_fan_out_job_queued_by_code_before_tokens_for_a_tokened_campaign_carries_it_on(
    b: Backend,
) {
    let c = campaign(b, |_| {}).await;
    let (next, sends) = c.run(&Campaign::job(&c.first)).await;
    let mut old = next[0].clone();
    old.token = None;
    let (old_next, old_sends) = c.run(&old).await;
    assert_eq!(
        (old_next.len(), old_sends.len()),
        (1, SLICE),
        "its slice recorded and queued, its next job queued"
    );
    let mut all = sends;
    all.extend(old_sends);
    c.complete(old_next, all).await;
}

/// A campaign paused mid-chain: its next job waits on the queue, coming back to look at the
/// hold (put back as a fresh message; the one received deleted, but a delete may be lost,
/// and that one comes back too). Resumed, the chain goes on once: one next job between
/// them. And resuming queues no fan-out job of its own.
async fn a_campaign_paused_and_resumed_mid_chain_fans_out_in_one_chain(b: Backend) {
    let c = campaign(b, |_| {}).await;
    let (next, sends) = c.run(&Campaign::job(&c.first)).await;
    let mid = next[0].clone();
    broadcasts::pause(&c.deps, &c.tenant, &c.id).await.unwrap();
    let outcome = broadcasts::fan_out_in_slices(&c.deps, &mid, SLICE)
        .await
        .unwrap();
    let Outcome::Again(back, _) = outcome else {
        panic!("not put back to wait: {outcome:?}")
    };
    assert!(c.shelf.take().is_empty(), "nothing queued while paused");
    broadcasts::resume(&c.deps, &c.tenant, &c.id).await.unwrap();
    assert!(c.shelf.take().is_empty(), "a resume queues no fan-out job");
    // The job put back, and the one received whose delete was lost.
    let (after_back, back_sends) = c.run(&Campaign::job(&back)).await;
    let (after_lost, lost_sends) = c.run(&mid).await;
    assert_eq!(
        (after_back.len(), lost_sends.len()),
        (1, 0),
        "one next job, the duplicate records nothing"
    );
    // The duplicate queues the next job again, marked, in case it was lost; run after the
    // chain moved on, that copy queues nothing.
    assert_the_copy_of(&after_lost, &after_back[0]);
    let (next_after, next_sends) = c.run(&after_back[0]).await;
    let (copy_next, copy_sends) = c.run(&after_lost[0]).await;
    assert_eq!((copy_next.len(), copy_sends.len()), (0, 0));
    let mut all = sends;
    all.extend(back_sends);
    all.extend(next_sends);
    c.complete(next_after, all).await;
}

/// A run's last progress write that landed with its answer lost: the SDK's retry of it
/// finds the token the write itself set, and is written again (not refused by it), so the
/// run still queues the next job: the chain does not end there.
async fn a_fan_out_whose_last_progress_answer_was_lost_still_queues_its_next_job(b: Backend) {
    let c = campaign(b, |a| a.lose_last_answers = true).await;
    let (next, sends) = c.run(&Campaign::job(&c.first)).await;
    assert_eq!(next.len(), 1, "the next job");
    c.complete(next, sends).await;
}

/// A run whose next job cannot be queued (the queue down for a moment) after its progress
/// write moved the chain on puts the token back and answers the error: the job received,
/// retried, carries the chain on (it was dropped as a duplicate, and the campaign stalled).
async fn a_fan_out_whose_next_job_cannot_be_queued_carries_on_when_retried(b: Backend) {
    let c = campaign(b, |_| {}).await;
    let (next, sends) = c.run(&Campaign::job(&c.first)).await;
    let mid = next[0].clone();
    c.shelf.refuse_next_fan_out.store(true, SeqCst);
    assert!(broadcasts::fan_out_in_slices(&c.deps, &mid, SLICE)
        .await
        .is_err());
    let (_, refused_sends) = by_kind(&c.shelf.take());
    let (retried_next, retried_sends) = c.run(&mid).await;
    assert_eq!(retried_next.len(), 1, "the retry queues the next job");
    let mut all = sends;
    all.extend(refused_sends);
    all.extend(retried_sends);
    c.complete(retried_next, all).await;
}

on_both_backends!(
    a_fan_out_job_delivered_twice_in_turn_queues_one_next_job,
    a_fan_out_job_delivered_twice_at_once_queues_one_next_job,
    a_fan_out_job_from_before_tokens_completes_its_campaign_once,
    a_campaign_paused_and_resumed_mid_chain_fans_out_in_one_chain,
    a_fan_out_whose_last_progress_answer_was_lost_still_queues_its_next_job,
    a_fan_out_whose_next_job_cannot_be_queued_carries_on_when_retried,
    a_fan_out_run_that_died_before_queueing_its_next_job_is_carried_on_by_its_redelivery,
    a_fan_out_job_queued_by_code_before_tokens_for_a_tokened_campaign_carries_it_on,
);
