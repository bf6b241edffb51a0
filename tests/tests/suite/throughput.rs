//! Per-number throughput and the sending deadline, end to end through local mode.

use std::time::Duration;

use futures::StreamExt;
use kirim::config::Backend;
use kirim_infra::local::start;
use kirim_tests::{capture_logs, local_config, TestApp, OPERATOR_TOKEN};
use serde_json::Value;

async fn app_with(cfg: kirim_infra::local::LocalConfig) -> TestApp {
    capture_logs();
    let stack = cfg.stack_name.clone();
    TestApp {
        http: reqwest::Client::new(),
        app: start(cfg).await.expect("local mode starts"),
        stack,
    }
}

/// Requests the sandbox answered for one business phone number.
fn answered_for(app: &TestApp, pnid: &str) -> Vec<kirim_infra::sandbox::ReceivedRequest> {
    app.app
        .sandbox
        .received()
        .into_iter()
        .filter(|r| r.phone_number_id == pnid)
        .collect()
}

/// A burst queued at once, then sent by two dispatchers at the same time (two queue
/// pollers sharing the store): the sandbox sees the number's rate and never answers
/// 130429. The rate is taken from the sandbox's own arrival times over the steady part
/// (the middle 80% of the burst), never from timing our code.
///
/// The sandbox runs in the test process, so arrival times carry the process's scheduling
/// jitter: pacing at 97% of the tier absorbs ~30 ms of it (`throttle::PACING`). When the
/// whole suite runs on two shared cores the process is stalled for longer (100 ms and
/// more, measured): a send whose slot passed during a stall goes out late, together with
/// the next ones, and the sandbox's rolling second sees a few too many (130429); a
/// dispatcher stalled between two batches leaves its number idle, and the burst's rate
/// falls below the tier's. Neither says anything of the limiter. So each burst is timed
/// by a probe beside it (how late a 5 ms timer fires on the same runtime): a burst that
/// ran on time is judged strictly; one that met a stall past the pacing's margin and
/// missed the pace is run again, up to three times in all. Whatever the load, every
/// burst must reach the sandbox once a message and meet 130429 on few of its requests
/// (two dispatchers that did not share the number's slots would send at twice its rate,
/// and have about half refused).
async fn two_dispatchers_together_keep_a_burst_at_the_numbers_rate_without_130429(b: Backend) {
    for attempt in 1..=3 {
        match burst_at_the_numbers_rate(b).await {
            Ok(()) => return,
            Err(why) => eprintln!("{b:?}: burst {attempt} was stalled ({why}); not judged"),
        }
    }
    eprintln!(
        "{b:?}: every burst met a stall past the pacing's margin: the pace was not judged \
         (each message still reached the sandbox once, with few 130429)"
    );
}

/// The stall past which a burst is not judged: two thirds of what the pacing absorbs
/// (`throttle::PACING`'s ~30 ms), as the probe sees a lower bound of what a request met
/// (under load a burst met 130429 with the probe's worst at 32 ms; unloaded, its worst was
/// 9-12 ms, measured).
const PACING_MARGIN: Duration = Duration::from_millis(20);

/// A task on the test's runtime that records how late a 5 ms timer fires (the worst, in
/// microseconds): the process's own scheduling stalls, which the sandbox's arrival times
/// carry too.
fn stall_probe() -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let worst = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = worst.clone();
    let probe = tokio::spawn(async move {
        let tick = Duration::from_millis(5);
        loop {
            let asked = std::time::Instant::now();
            tokio::time::sleep(tick).await;
            let late = asked.elapsed().saturating_sub(tick);
            let late = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
            seen.fetch_max(late, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (probe, worst)
}

/// One burst. `Err` (why) when it missed the pace while the process was stalled past the
/// pacing's margin; a burst that ran on time is asserted to have kept it.
async fn burst_at_the_numbers_rate(b: Backend) -> Result<(), String> {
    let burst: usize = match b {
        Backend::Memory => 400,
        // moto serialises DynamoDB: a smaller burst keeps the test short.
        Backend::Aws => 60,
    };
    let mut cfg = local_config(b).await;
    cfg.pollers = 0;
    cfg.sandbox_rate_limit = 80;
    // This test is about the dispatchers' pace, not the API's: let the burst in at once.
    cfg.settings.limits.key = kirim::domain::RequestLimits {
        requests_per_sec: kirim::domain::MAX_REQUESTS_PER_SEC,
        burst: kirim::domain::MAX_BURST,
    };
    // Statuses come after the test: the burst is measured without webhook traffic.
    cfg.sandbox_status_delay = Duration::from_secs(600);
    let app = app_with(cfg).await;
    let t = app.onboard(burst as i64 + 10).await;
    let sends = futures::stream::iter(0..burst)
        .map(|i| {
            let app = &app;
            let key = t.key.clone();
            async move {
                app.send_ok(&key, &format!("+6012{:07}", 1_000_000 + i * 10))
                    .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(sends.len(), burst);

    let (probe, worst) = stall_probe();
    let pollers: Vec<_> = (0..2)
        .map(|_| {
            let deps = app.app.deps.clone();
            tokio::spawn(async move {
                loop {
                    kirim::queue_handlers::poll_once(&deps, Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    // A deadline, not a speed assertion: the checks below decide.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(180);
    while answered_for(&app, &t.phone_number_id)
        .iter()
        .filter(|r| r.response.status == 200)
        .count()
        < burst
        && tokio::time::Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in &pollers {
        p.abort();
    }
    probe.abort();
    let stalled = Duration::from_micros(worst.load(std::sync::atomic::Ordering::Relaxed));

    let answered = answered_for(&app, &t.phone_number_id);
    let limited: Vec<_> = answered
        .iter()
        .filter(|r| r.response.status == 429 || r.response.body.to_string().contains("130429"))
        .collect();
    // The tightest rolling second: 81 consecutive arrivals must span a second or more.
    let mut all: Vec<i64> = answered
        .iter()
        .map(|r| r.received_at.timestamp_micros())
        .collect();
    all.sort();
    let tightest = all.windows(81).map(|w| w[80] - w[0]).min();
    eprintln!(
        "{b:?}: 81 consecutive requests spanned at least {tightest:?} µs; \
         the process was stalled up to {stalled:?}"
    );
    let mut times: Vec<i64> = answered
        .iter()
        .filter(|r| r.response.status == 200)
        .map(|r| r.received_at.timestamp_micros())
        .collect();
    assert_eq!(times.len(), burst, "every message reached the sandbox once");
    // Whatever the load: dispatchers that did not share the number's slots would have
    // about half refused.
    assert!(
        limited.len() * 4 < burst,
        "{} answers of {} were 130429",
        limited.len(),
        answered.len()
    );
    times.sort();
    let (from, to) = (burst / 10, burst - burst / 10 - 1);
    let secs = (times[to] - times[from]) as f64 / 1e6;
    let rate = (to - from) as f64 / secs;
    println!(
        "{b:?}: {} sends in the steady part at {rate:.2} msgs/s",
        to - from + 1
    );
    // Over the tier is the limiter's fault whatever the load: a stall only makes sends late.
    assert!(
        rate <= 80.0 * 1.05,
        "{b:?}: achieved {rate:.2} msgs/s, over the tier, stalled at most {stalled:?}"
    );
    let kept = if !limited.is_empty() {
        Err(format!("{} answers were 130429", limited.len()))
    } else {
        match b {
            // The strict check: within 5% of the tier.
            Backend::Memory if (rate - 80.0).abs() > 80.0 * 0.05 => {
                Err(format!("achieved {rate:.2} msgs/s, not within 5% of 80"))
            }
            // moto serialises every DynamoDB call in one Python process: the rate it
            // reaches is recorded in BENCHMARKS.md; here it must only never exceed the tier.
            Backend::Aws if rate > 80.0 * 1.05 => Err(format!("achieved {rate:.2} msgs/s")),
            _ => Ok(()),
        }
    };
    match kept {
        Err(why) if stalled > PACING_MARGIN => Err(format!("{why}, stalled {stalled:?}")),
        Err(why) => panic!("{b:?}: {why}, on a process stalled at most {stalled:?}"),
        Ok(()) => Ok(()),
    }
}

/// The operator sets a tenant's tier; only Meta's tiers are accepted.
async fn the_operator_sets_a_tenants_throughput_tier(b: Backend) {
    let app = app_with(local_config(b).await).await;
    let t = app.onboard(1).await;
    let put = |per_sec: Value| {
        app.http
            .put(app.url(&format!("/v1/platform/tenants/{}/throughput", t.tenant_id)))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&serde_json::json!({ "per_sec": per_sec }))
            .send()
    };
    let res = put(20.into()).await.expect("put");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["throughput_per_sec"], 20, "{body}");
    assert_eq!(put(50.into()).await.expect("put").status(), 400);
    // A tenant's own key cannot change it.
    let res = app
        .http
        .put(app.url(&format!("/v1/platform/tenants/{}/throughput", t.tenant_id)))
        .bearer_auth(&t.key)
        .json(&serde_json::json!({ "per_sec": 1000 }))
        .send()
        .await
        .expect("put");
    assert!(
        res.status() == 401 || res.status() == 403,
        "{}",
        res.status()
    );
    let tenant = app
        .app
        .deps
        .tenants
        .get_tenant(&kirim::domain::TenantId::parse(&t.tenant_id).expect("id"))
        .await
        .expect("get")
        .expect("tenant");
    assert_eq!(tenant.throughput_per_sec, Some(20));
}

/// Meta never answers in time and no status webhook ever comes: after the sending
/// deadline the message is failed with `outcome_unknown`, not refunded (Meta may have
/// sent it), and it was sent exactly once.
async fn a_message_left_sending_fails_as_outcome_unknown_after_the_deadline_and_is_sent_once(
    b: Backend,
) {
    let mut cfg = local_config(b).await;
    cfg.settings.sending_deadline = Duration::from_secs(2);
    let app = app_with(cfg).await;
    // Statuses go nowhere: nothing settles the message.
    app.app
        .sandbox
        .set_webhook_url("http://127.0.0.1:9/nowhere".into());
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450005").await;
    let view = app.wait_status(&t.key, &id, "sending").await;
    assert_eq!(view["status"], "sending", "{view}");
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"]["code"], "outcome_unknown", "{view}");
    assert_eq!(app.credits(&t.key).await, 4, "not refunded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sandbox_requests_to("60123450005").len(), 1, "never two");
}

/// The store's send slots with each reservation recorded: (slots asked, granted).
struct Recorded {
    inner: std::sync::Arc<dyn kirim::ports::Throughput>,
    runs: std::sync::Mutex<Vec<(u32, bool)>>,
}

#[async_trait::async_trait]
impl kirim::ports::Throughput for Recorded {
    async fn reserve_slots(
        &self,
        key: &str,
        per_sec: u32,
        now: chrono::DateTime<chrono::Utc>,
        max_wait: Duration,
        count: u32,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, kirim::store_error::StoreError> {
        let got = self
            .inner
            .reserve_slots(key, per_sec, now, max_wait, count)
            .await;
        if let Ok(g) = &got {
            self.runs.lock().expect("runs").push((count, g.is_some()));
        }
        got
    }
    async fn set_throughput(
        &self,
        tenant: &kirim::domain::TenantId,
        per_sec: u32,
    ) -> Result<kirim::ports::Tenant, kirim::store_error::StoreError> {
        self.inner.set_throughput(tenant, per_sec).await
    }
}

/// Ten queued messages from one number, taken by the dispatcher as one batch: each is
/// sent once at the number's pace, and on DynamoDB their send slots take fewer writes
/// than messages (the batch's line, `throttle::pooled`). On the memory store a
/// reservation never waits, so there is nothing to share: each takes its own.
async fn a_dispatcher_batch_takes_its_numbers_send_slots_in_fewer_writes_than_messages(b: Backend) {
    let mut cfg = local_config(b).await;
    cfg.pollers = 0;
    cfg.sandbox_rate_limit = 80;
    cfg.sandbox_status_delay = Duration::from_secs(600);
    let app = app_with(cfg).await;
    let t = app.onboard(20).await;
    for i in 0..10 {
        app.send_ok(&t.key, &format!("+6013{:07}", 2_000_000 + i * 10))
            .await;
    }
    let mut deps = app.app.deps.clone();
    let recorded = std::sync::Arc::new(Recorded {
        inner: deps.throughput.clone(),
        runs: std::sync::Mutex::new(Vec::new()),
    });
    deps.throughput = recorded.clone();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut batches = 0;
    while answered_for(&app, &t.phone_number_id).len() < 10 && tokio::time::Instant::now() < give_up
    {
        if kirim::queue_handlers::poll_once(&deps, Duration::from_millis(200)).await > 0 {
            batches += 1;
        }
    }
    let answered = answered_for(&app, &t.phone_number_id);
    assert_eq!(answered.len(), 10, "each message reached Meta once");
    assert!(answered.iter().all(|r| r.response.status == 200));
    let runs = recorded.runs.lock().expect("runs").clone();
    let granted: u32 = runs.iter().filter(|r| r.1).map(|r| r.0).sum();
    // One slot a message, and one more for each wait that woke over `CARRY_TOLERANCE` past
    // its slot (a stall of the loaded test process: the slot is given up for a fresh one,
    // `throttle::acquire`), each fresh slot its own reservation.
    assert!(granted >= 10, "one slot a message: {runs:?}");
    let fresh = usize::try_from(granted - 10).unwrap_or(usize::MAX);
    assert!(fresh <= 10, "at most one fresh slot a message: {runs:?}");
    eprintln!("{b:?}: {batches} batch(es), reservations {runs:?}");
    match b {
        Backend::Memory => assert!(
            runs.len() == 10 + fresh && runs.iter().all(|r| *r == (1, true)),
            "{runs:?}"
        ),
        Backend::Aws => assert!(
            runs.len() < 10 + fresh && runs.iter().any(|r| r.0 > 1),
            "ten messages, {} reservation writes: {runs:?}",
            runs.len()
        ),
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { super::$name(kirim::config::Backend::Memory).await } )*
        }
        mod aws_backend_on_moto {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { super::$name(kirim::config::Backend::Aws).await } )*
        }
    };
}

/// Send slots that cannot be read (the limiter's item throttled).
struct LimiterDown;

#[async_trait::async_trait]
impl kirim::ports::Throughput for LimiterDown {
    async fn reserve_slots(
        &self,
        _: &str,
        _: u32,
        _: chrono::DateTime<chrono::Utc>,
        _: Duration,
        _: u32,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable(
            "ProvisionedThroughputExceeded".into(),
        ))
    }
    async fn set_throughput(
        &self,
        _: &kirim::domain::TenantId,
        _: u32,
    ) -> Result<kirim::ports::Tenant, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("down".into()))
    }
}

/// A claim the limiter could not give a slot to never reached Meta: it is given back as
/// not an attempt (`KIRIM_DISPATCH_MAX_ATTEMPTS` counts requests to Meta), and leaves no
/// `sending` event behind, however many times the limiter fails; then the message is sent.
async fn a_limiter_that_fails_spends_no_attempt_and_leaves_no_trace_in_the_history(b: Backend) {
    let mut cfg = local_config(b).await;
    cfg.pollers = 0;
    let app = app_with(cfg).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60133000010").await;
    let mut down = app.app.deps.clone();
    down.throughput = std::sync::Arc::new(LimiterDown);
    let job = down
        .queue
        .receive(1, Duration::from_secs(2))
        .await
        .expect("received")
        .pop()
        .expect("the job");
    for _ in 0..3 {
        let outcome = kirim::service::dispatch::handle(&down, &job.body).await;
        assert!(
            matches!(outcome, kirim::service::jobs::Outcome::Backoff(_)),
            "{outcome:?}"
        );
    }
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let message = kirim::domain::MessageId::from_trusted(id.as_str());
    let m = down
        .messages
        .get_message(&tenant, &message)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, kirim::domain::MessageStatus::Accepted);
    assert_eq!(m.attempts, 0, "no attempt spent");
    assert_eq!(m.events.len(), 1, "accepted alone: {:?}", m.events);
    let outcome = kirim::service::dispatch::handle(&app.app.deps, &job.body).await;
    assert_eq!(outcome, kirim::service::jobs::Outcome::Done);
    let view = app.message(&t.key, &id).await;
    // Sent, and the sandbox's delivery may already have come back for it.
    assert!(
        ["sent", "delivered", "read"].contains(&view["status"].as_str().unwrap_or_default()),
        "{view}"
    );
    assert_eq!(answered_for(&app, &t.phone_number_id).len(), 1);
}

on_both_backends!(
    a_limiter_that_fails_spends_no_attempt_and_leaves_no_trace_in_the_history,
    two_dispatchers_together_keep_a_burst_at_the_numbers_rate_without_130429,
    the_operator_sets_a_tenants_throughput_tier,
    a_message_left_sending_fails_as_outcome_unknown_after_the_deadline_and_is_sent_once,
    a_dispatcher_batch_takes_its_numbers_send_slots_in_fewer_writes_than_messages,
);
