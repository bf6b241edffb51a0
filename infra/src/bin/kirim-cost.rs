//! `kirim-cost`: what one message's life costs in AWS calls and DynamoDB capacity units (see
//! `scripts/bench-cost`, which builds and starts everything; README "Cost per message").
//!
//! It starts the counting proxy ([`kirim_infra::cost`]) in front of the emulator named by
//! `AWS_ENDPOINT_URL`, `kirim-local` (aws backend) as a child process pointed at the proxy,
//! and the Meta sandbox in this process, whose status webhooks it holds and hands to the
//! platform one at a time. Each message is taken through its phases in turn, each counted
//! on its own: the send request (queue polls held at the proxy), the dispatch (polls let
//! through), then the `sent`, `delivered` and `read` webhooks. The first `--warmup` messages
//! warm the caches and are reported apart; the table is the mean of the rest.
//!
//! `--batch B` (1–100; 1 by default) takes B messages through each phase together: B sends,
//! then one dispatch of the B queued jobs (the dispatcher's batch, as an SQS event of B
//! records on Lambda), then their 3 × B webhooks; the table stays per message. What a
//! dispatcher does once per batch (the quality counter) then shows at 1/B a message. Above
//! 10 the queue hands them over as several batches of 10 (one at a time unless `--pollers`
//! lets several run at once, as Lambda's concurrency does; with a low `--tier` that is
//! what makes the number's limiter turn messages away, counted as throttled retries).
//!
//! `--latency MS` (5 by default, as a network in one region) holds every AWS call that long
//! at the proxy: calls made together then overlap for certain. The tables' round trips
//! (calls that found no other in flight) are then exact for a request handled alone (a
//! send, a webhook, a dispatch at `--batch 1`). Where independent jobs overlap (a
//! dispatcher's batch), their calls merge into fewer stretches, so the dispatch's round
//! trips at `--batch` > 1 are a lower bound: the batch lasts at least as long as its
//! longest job, about a lone dispatch's round trips. The units do not depend on the
//! latency, except where timing decides them (a batch's shared send slots: more waiters
//! join a slower write); `--latency 0` measures as before stop 21.
//!
//! `--broadcast N [--tier T] [--pollers P]` counts one broadcast of N recipients instead,
//! from its fan-out to Meta's last `sent`, with the tenant at Meta's tier T (20, 80 or
//! 1000) and P dispatcher batches at once (the template's `MaximumConcurrency` is 5):
//! what a campaign's recipient costs, the throttled retries included.
//!
//! `--credits C` onboards the tenant with C credits instead of what the run spends and 10
//! more: a tenant's single sends are debited from its credit lanes only while its tenant
//! item holds enough to refill them (data model A80), so a large balance (and a warm-up
//! long enough for the 16 lanes' first refills) measures a sending tenant's steady state.
//!
//! `kirim-cost [--messages N] [--warmup W] [--batch B] [--latency MS] [--credits C]`
//! `kirim-cost --broadcast N [--tier T] [--pollers P] [--pause S] [--latency MS] [--backend memory]`
//!
//! `--cancel 1` (with `--broadcast`) cancels the broadcast before its fan-out runs and
//! counts what closing its recipients costs, per recipient (nothing is sent to Meta).
//! `--create 1` (with `--broadcast`) counts and times the `POST /v1/broadcasts` alone, with
//! ten of its N recipients opted out beforehand (spread over the list), and stops there: its
//! fan-out never runs. What a campaign's creation costs, and how long its answer takes at
//! the proxy's `--latency`. `--paired P` pairs the first P recipients with a user id each
//! beforehand (none opted out by its id), as Meta's webhooks pair them: written straight
//! into the emulator by the store's own `pair_user`, not through the proxy.
//! `--pause S` (with `--broadcast`) pauses the broadcast once its first recipients are
//! sent, counts what its waiting recipients cost for S seconds of the pause (per second),
//! then resumes it and counts the rest as before: what a paused campaign costs by the hour.
//!
//! `--backend memory` runs local mode on its own storage instead: no AWS call to count, but
//! the dispatchers reach the number's pace, which moto (one Python process) cannot at tier
//! 20, so the throttled retries show.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use kirim_infra::cost::{CountingProxy, Tally, Units};
use kirim_infra::drill::{sibling_binary, Client, Platform, SendAnswer};
use kirim_infra::sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;
use tokio::sync::mpsc;

const OPERATOR_TOKEN: &str = "op_cost_run";
const APP_SECRET: &str = "cost-run-app-secret";
/// How long the proxy must see no call before a phase counts as over.
const QUIET: Duration = Duration::from_millis(300);
const PHASES: [&str; 5] = [
    "send",
    "dispatch",
    "webhook sent",
    "webhook delivered",
    "webhook read",
];

struct Args {
    messages: usize,
    warmup: usize,
    batch: usize,
    latency: Duration,
    /// `--broadcast N`: one broadcast of N recipients instead of single messages.
    broadcast: Option<usize>,
    /// `--tier T`: the tenant's Meta throughput tier (20, 80 or 1000; 1000 by default).
    tier: u32,
    /// `--pollers P`: concurrent dispatcher batches (Lambda's `MaximumConcurrency`).
    pollers: usize,
    /// `--backend memory`: local mode's own storage (nothing to count; for the throttled
    /// retries at a pace moto cannot reach).
    memory: bool,
    /// `--pause S`: the broadcast paused for S seconds once its first recipients are sent.
    pause: Option<u64>,
    /// `--cancel 1`: the broadcast cancelled before its fan-out runs.
    cancel: bool,
    /// `--create 1`: only the broadcast's creation, timed.
    create: bool,
    /// `--paired P` (with `--create`): the first P recipients paired with a user id.
    paired: usize,
    /// `--credits C`: the tenant's opening balance (by default what the run spends and 10
    /// more: a low balance, whose single sends take the tenant item, data model A80).
    credits: Option<usize>,
}

fn args() -> Result<Args, String> {
    let (mut messages, mut warmup, mut batch, mut latency) = (20, 2, 1, 5);
    let (mut broadcast, mut tier, mut pollers, mut memory) = (None, 1000, 1, false);
    let mut pause = None;
    let (mut cancel, mut create, mut paired) = (false, false, 0);
    let mut credits = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--backend" {
            memory = match value.as_str() {
                "memory" => true,
                "aws" => false,
                _ => return Err(format!("--backend {value}: memory or aws")),
            };
            continue;
        }
        let n = value
            .parse::<usize>()
            .map_err(|_| format!("{flag} {value}: a number"))?;
        match flag.as_str() {
            "--messages" if n > 0 => messages = n,
            "--warmup" => warmup = n,
            // SQS hands a Lambda at most 10 records (template.yaml's BatchSize); more are
            // several dispatcher batches, at once with `--pollers`.
            "--batch" if (1..=100).contains(&n) => batch = n,
            "--latency" if n <= 1000 => latency = n as u64,
            "--broadcast" if (1..=10_000).contains(&n) => broadcast = Some(n),
            "--tier" if [20, 80, 1000].contains(&n) => tier = n as u32,
            "--pollers" if (1..=50).contains(&n) => pollers = n,
            "--pause" if (1..=3600).contains(&n) => pause = Some(n as u64),
            "--cancel" => cancel = n > 0,
            "--create" => create = n > 0,
            "--paired" if n <= 10_000 => paired = n,
            "--credits" if (1..=1_000_000_000).contains(&n) => credits = Some(n),
            _ => return Err(format!("unknown argument {flag} {value}")),
        }
    }
    Ok(Args {
        messages,
        warmup,
        batch,
        latency: Duration::from_millis(latency),
        broadcast,
        tier,
        pollers,
        memory,
        pause,
        cancel,
        create,
        paired,
        credits,
    })
}

type Hook = (String, Bytes);

async fn hold_webhook(
    State(tx): State<mpsc::UnboundedSender<Hook>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = tx.send((sig, body));
    StatusCode::OK
}

fn status_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/entry/0/changes/0/value/statuses/0/status")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "other".into())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kirim-cost: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let Args {
        messages,
        warmup,
        batch,
        latency,
        broadcast,
        tier,
        pollers,
        memory,
        pause,
        cancel,
        create,
        paired,
        credits,
    } = args()?;
    if (pause.is_some() || cancel || create) && broadcast.is_none() {
        return Err("--pause, --cancel and --create need --broadcast".into());
    }
    if paired > 0 && (!create || broadcast.is_some_and(|n| paired > n)) {
        return Err("--paired needs --create, and at most --broadcast recipients".into());
    }
    // Whole batches: the messages rounded up to a multiple of the batch.
    let rounds = messages.div_ceil(batch);
    let messages = rounds * batch;
    let upstream =
        std::env::var("AWS_ENDPOINT_URL").map_err(|_| "AWS_ENDPOINT_URL (the emulator) unset")?;
    let binary =
        sibling_binary("kirim-local").ok_or("kirim-local is not built beside kirim-cost")?;
    let proxy = CountingProxy::start(&upstream)
        .await
        .map_err(|e| format!("proxy: {e}"))?;

    // The sandbox, its webhooks held here.
    let (tx, mut hooks) = mpsc::unbounded_channel::<Hook>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut cfg = SandboxConfig::new(APP_SECRET, "100000000000001");
    cfg.webhook_url = Some(format!("http://{addr}/hold"));
    cfg.status_delay = Duration::from_millis(10);
    cfg.rate_limit_per_sec = 1000;
    let sandbox = Sandbox::new(cfg);
    let router = Router::new()
        .nest("/graph", sandbox.graph_router())
        .merge(sandbox.inspect_router())
        .merge(
            Router::new()
                .route("/hold", post(hold_webhook))
                .with_state(tx),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let stack = format!("cost{}", ulid::Ulid::new().to_string().to_lowercase());
    let env: Vec<(String, String)> = [
        (
            "KIRIM_BACKEND",
            if memory { "memory" } else { "aws" }.to_owned(),
        ),
        ("KIRIM_STACK_NAME", stack.clone()),
        ("AWS_ENDPOINT_URL", proxy.url.clone()),
        ("KIRIM_OPERATOR_TOKEN", OPERATOR_TOKEN.into()),
        ("KIRIM_META_APP_SECRET", APP_SECRET.into()),
        ("KIRIM_META_VERIFY_TOKEN", "cost-run-verify".into()),
        ("KIRIM_META_BASE_URL", format!("http://{addr}/graph")),
        ("KIRIM_META_THROUGHPUT", "1000".into()),
        ("KIRIM_LOCAL_POLLERS", pollers.to_string()),
        // As on Lambda (wiring::READ_CACHE_TTL), unless the caller says otherwise.
        (
            "KIRIM_READ_CACHE_TTL",
            std::env::var("KIRIM_READ_CACHE_TTL").unwrap_or_else(|_| "5s".into()),
        ),
        // As on Lambda (wiring::SECRET_CACHE_TTL).
        (
            "KIRIM_SECRET_CACHE_TTL",
            std::env::var("KIRIM_SECRET_CACHE_TTL").unwrap_or_else(|_| "300s".into()),
        ),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let log = std::env::temp_dir().join(format!("kirim-cost-{port}.log"));
    let platform = Platform::spawn(&binary, &env, &listen, &log, Duration::from_secs(180)).await?;
    let client = Client::new(&platform.base_url, OPERATOR_TOKEN);
    let (tenant, key) = client
        .onboard(
            "Cost",
            "800000000000001",
            credits.unwrap_or(broadcast.unwrap_or(messages) + 10) as i64,
        )
        .await?;
    client.set_throughput(&tenant, tier).await?;
    proxy.settle(QUIET, Duration::from_secs(60)).await;
    proxy.set_latency(latency);
    let setup = proxy.take();
    if let (Some(n), true) = (broadcast, create) {
        let pairing = Pairing {
            upstream: &upstream,
            stack: &stack,
            tenant: &tenant,
            paired,
        };
        return created_run(&proxy, &client, &key, n, latency, pairing).await;
    }
    if let Some(n) = broadcast {
        let shape = BroadcastShape {
            n,
            tier,
            pollers,
            pause,
            cancel,
        };
        return broadcast_run(&proxy, &client, &key, &mut hooks, &log, shape).await;
    }
    println!(
        "kirim-cost: {messages} messages ({warmup} warm-up) in batches of {batch}, aws backend through \
         the counting proxy, each call held {} ms (platform log {}); setup made {} AWS calls",
        latency.as_millis(),
        log.display(),
        setup.values().flat_map(|m| m.values()).map(|u| u.calls).sum::<u64>()
    );

    let http = reqwest::Client::new();
    let webhook_url = format!("{}/webhooks/meta", platform.base_url);
    let mut steady: Tally = Tally::new();
    let mut first: Option<Tally> = None;
    let mut log_bytes_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut log_bytes = 0u64;
    let mut measured_messages = 0usize;
    let mut throttled = 0u64;
    for round in 0..rounds {
        let i = round * batch;
        proxy.settle(QUIET, Duration::from_secs(60)).await;
        proxy.gate(false);
        proxy.set_phase("send");
        for m in i..i + batch {
            let to = format!("+6012{:07}9", m);
            match client.send(&key, &to, &format!("cost-{m}")).await {
                SendAnswer::Accepted(_) => {}
                other => return Err(format!("message {m}: send answered {other:?}")),
            }
        }
        proxy.settle(QUIET, Duration::from_secs(60)).await;
        proxy.set_phase("dispatch");
        proxy.gate(true);
        let mut held = Vec::new();
        for _ in 0..3 * batch {
            let hook = tokio::time::timeout(Duration::from_secs(120), hooks.recv())
                .await
                .map_err(|_| format!("messages {i}..: the sandbox sent no status webhook"))?
                .ok_or("the webhook channel closed")?;
            held.push(hook);
            if held.len() == 1 {
                // The dispatch is over once Meta answered and the platform is quiet.
                proxy.settle(QUIET, Duration::from_secs(60)).await;
                proxy.set_phase("idle");
            }
        }
        for (sig, body) in held {
            proxy.set_phase(&format!("webhook {}", status_of(&body)));
            let res = http
                .post(&webhook_url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", sig)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("webhook: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("messages {i}..: webhook answered {}", res.status()));
            }
            proxy.settle(QUIET, Duration::from_secs(60)).await;
        }
        proxy.set_phase("idle");
        let tally = proxy.take();
        let now = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        if round == 0 {
            first = Some(tally.clone());
        }
        if i >= warmup {
            measured_messages += batch;
            for (phase, ops) in tally {
                let into = steady.entry(phase).or_default();
                for (op, u) in ops {
                    *into.entry(op).or_default() += u;
                }
            }
            log_bytes += now.saturating_sub(log_bytes_before);
            throttled += throttled_retries(&log, log_bytes_before);
        }
        log_bytes_before = now;
    }
    let measured = measured_messages.max(1) as f64;
    if let Some(f) = first {
        match batch {
            1 => println!("\n## The first message (cold caches)\n"),
            _ => println!("\n## The first batch of {batch}, per message (cold caches)\n"),
        }
        print_table(&f, batch as f64);
    }
    println!(
        "\n## Per message at steady state (mean of {measured_messages} messages after {} warm-up, in batches of {batch})\n",
        messages - measured_messages
    );
    let totals = print_table(&steady, measured);
    println!(
        "\nLog bytes written by the platform per message at RUST_LOG={}: {:.0}",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        log_bytes as f64 / measured
    );
    println!(
        "Throttled retries (a claim given back: the number's slots taken for more than a \
         second ahead) per message: {:.2}",
        throttled as f64 / measured
    );
    print_cost(&totals, log_bytes as f64 / measured, batch.min(10) as f64);
    drop(platform);
    Ok(())
}

/// `--broadcast N`: one broadcast of N recipients, counted from its fan-out to Meta's last
/// `sent` (the webhooks are held and not delivered: a broadcast's message costs in them
/// what a single one does). What a campaign adds per recipient is the fan-out and, when
/// the queue offers the dispatchers more than the number's tier allows, the throttled
/// rounds: each a claim given back and a retry later.
struct BroadcastShape {
    n: usize,
    tier: u32,
    pollers: usize,
    pause: Option<u64>,
    cancel: bool,
}

/// Recipients sent before `--pause` pauses the broadcast.
const SENT_BEFORE_PAUSE: usize = 5;

async fn broadcast_run(
    proxy: &CountingProxy,
    client: &Client,
    key: &str,
    hooks: &mut mpsc::UnboundedReceiver<Hook>,
    log: &std::path::Path,
    shape: BroadcastShape,
) -> Result<(), String> {
    let BroadcastShape {
        n,
        tier,
        pollers,
        pause,
        cancel,
    } = shape;
    let recipients: Vec<String> = (0..n).map(|m| format!("+6013{:07}9", m)).collect();
    proxy.gate(false);
    proxy.set_phase("broadcast");
    let id = client.broadcast(key, &recipients).await?;
    proxy.settle(QUIET, Duration::from_secs(60)).await;
    if cancel {
        return cancelled_run(proxy, client, key, &id, n).await;
    }
    let log_start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    proxy.set_phase("fan-out and dispatch");
    let started = std::time::Instant::now();
    proxy.gate(true);
    let mut sent = 0;
    let mut paused_tally = None;
    let mut paused_for = Duration::ZERO;
    while sent < n {
        if let (Some(secs), true) = (pause, sent == SENT_BEFORE_PAUSE.min(n - 1)) {
            if paused_tally.is_none() {
                // What came before the pause stays in the run's tally; the pause's own
                // seconds are counted apart.
                let before = proxy.take();
                client.broadcast_control(key, &id, "pause").await?;
                proxy.set_phase("paused");
                let at = std::time::Instant::now();
                tokio::time::sleep(Duration::from_secs(secs)).await;
                paused_tally = Some(proxy.take());
                paused_for = at.elapsed();
                proxy.restore(before);
                proxy.set_phase("fan-out and dispatch");
                client.broadcast_control(key, &id, "resume").await?;
            }
        }
        let (_, body) = tokio::time::timeout(Duration::from_secs(300), hooks.recv())
            .await
            .map_err(|_| format!("{sent} of {n} sent; the sandbox sent no webhook for 300 s"))?
            .ok_or("the webhook channel closed")?;
        if status_of(&body) == "sent" {
            sent += 1;
        }
    }
    let drained = started.elapsed() - paused_for;
    proxy.settle(QUIET, Duration::from_secs(60)).await;
    proxy.set_phase("idle");
    let tally = proxy.take();
    if let Some(paused) = paused_tally {
        println!(
            "kirim-cost: paused after {SENT_BEFORE_PAUSE} of {n} recipients were sent, for \
             {:.1} s; what the pause cost, per second of it (the pause request \
             included):\n",
            paused_for.as_secs_f64()
        );
        print_table(&paused, paused_for.as_secs_f64());
        println!();
    }
    let throttled = throttled_retries(log, log_start);
    println!(
        "kirim-cost: a broadcast of {n} recipients at tier {tier} ({pollers} dispatcher \
         batches at once): all sent to Meta in {:.1} s ({:.1} a second); {throttled} \
         throttled retries ({:.2} a recipient)\n",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        throttled as f64 / n as f64
    );
    println!("## Per recipient\n");
    print_table(&tally, n as f64);
    Ok(())
}

/// `--cancel`: the broadcast `id` of `n` recipients, accepted with its queue held, is
/// cancelled before its fan-out runs; then the queue is let go and what closing its
/// recipients costs (each ends `cancelled`, refunded; nothing reaches Meta) is counted
/// until the platform has made no call for two seconds.
async fn cancelled_run(
    proxy: &CountingProxy,
    client: &Client,
    key: &str,
    id: &str,
    n: usize,
) -> Result<(), String> {
    proxy.set_phase("cancel request");
    client.broadcast_control(key, id, "cancel").await?;
    proxy.settle(QUIET, Duration::from_secs(60)).await;
    proxy.set_phase("cancelled fan-out");
    let started = std::time::Instant::now();
    proxy.gate(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy
        .settle(Duration::from_secs(2), Duration::from_secs(900))
        .await;
    let took = started.elapsed().saturating_sub(Duration::from_secs(2));
    let tally = proxy.take();
    println!(
        "kirim-cost: a broadcast of {n} recipients cancelled before its fan-out ran: closed \
         in about {:.1} s\n",
        took.as_secs_f64()
    );
    println!("## Per recipient\n");
    print_table(&tally, n as f64);
    Ok(())
}

/// Recipients of a `--create` run opted out before it.
const OPTED_OUT: usize = 10;

/// `--paired`: which recipients of a `--create` run are paired with a user id, and where.
struct Pairing<'a> {
    /// The emulator itself (the pairings are not counted).
    upstream: &'a str,
    stack: &'a str,
    tenant: &'a str,
    /// The first this many recipients.
    paired: usize,
}

/// Pairs each of `phones` with a user id of its own, by the store's `pair_user` (both
/// halves, with the Messages TTL, as a webhook learns them), straight into the emulator.
async fn pair_recipients(pairing: &Pairing<'_>, phones: &[String]) -> Result<(), String> {
    use futures::StreamExt;
    use kirim::adapters::aws::DynamoStore;
    use kirim::domain::{PhoneNumber, TenantId, UserId};
    use kirim::ports::ContactStore;

    let sdk = kirim_infra::local::emulator_sdk_config(Some(pairing.upstream)).await;
    let table = kirim_infra::bootstrap::ensure_stack(&sdk, pairing.stack)
        .await
        .map_err(|e| format!("the stack's table: {e}"))?
        .table;
    let clock = std::sync::Arc::new(kirim::ports::SystemClock);
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table, clock);
    let tenant = TenantId::parse(pairing.tenant).ok_or("the tenant's id")?;
    let expires_at = Some(chrono::Utc::now().timestamp() + 30 * 86_400);
    let pairs = phones.iter().enumerate().map(|(i, p)| {
        let (store, tenant) = (&store, &tenant);
        async move {
            let phone = PhoneNumber::parse(p).map_err(|e| format!("{p}: {e}"))?;
            let user = UserId::parse(&format!("MY.77{i:08}")).ok_or("a user id")?;
            store
                .pair_user(tenant, &phone, &user, expires_at)
                .await
                .map_err(|e| format!("pairing: {e}"))
        }
    });
    let results: Vec<Result<(), String>> = futures::stream::iter(pairs)
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// `--create 1`: a broadcast of `n` recipients (utility), `OPTED_OUT` of them opted out
/// beforehand (and with `--paired`, its first recipients paired with user ids), created
/// with its queue held: the `POST /v1/broadcasts` timed and counted, its fan-out never run.
async fn created_run(
    proxy: &CountingProxy,
    client: &Client,
    key: &str,
    n: usize,
    latency: Duration,
    pairing: Pairing<'_>,
) -> Result<(), String> {
    let recipients: Vec<String> = (0..n).map(|m| format!("+6013{:07}9", m)).collect();
    let opted: Vec<&String> = recipients
        .iter()
        .step_by((n / OPTED_OUT).max(1))
        .take(OPTED_OUT)
        .collect();
    for phone in &opted {
        let res = client
            .http
            .put(format!("{}/v1/opt-outs/{phone}", client.base_url))
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| format!("opt-out: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("opt-out answered {}", res.status()));
        }
    }
    if pairing.paired > 0 {
        let started = std::time::Instant::now();
        pair_recipients(&pairing, &recipients[..pairing.paired]).await?;
        eprintln!(
            "kirim-cost: {} recipients paired in {:.1} s",
            pairing.paired,
            started.elapsed().as_secs_f64()
        );
    }
    proxy.settle(QUIET, Duration::from_secs(60)).await;
    let _ = proxy.take();
    proxy.gate(false);
    proxy.set_phase("create");
    let started = std::time::Instant::now();
    // The client's own 30 s timeout is API Gateway's; a slower creation is what is measured.
    let res = client
        .http
        .post(format!("{}/v1/broadcasts", client.base_url))
        .bearer_auth(key)
        .timeout(Duration::from_secs(900))
        .json(&serde_json::json!({
            "recipients": recipients,
            "template": {"name": "order_update", "language": "en_US", "category": "utility",
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "ORDER-1"}]}]},
        }))
        .send()
        .await
        .map_err(|e| format!("broadcast: {e}"))?;
    let took = started.elapsed();
    let status = res.status();
    let body: Value = res.json().await.map_err(|e| format!("broadcast: {e}"))?;
    if status != 202 || body["skipped_opted_out"].as_u64() != Some(opted.len() as u64) {
        return Err(format!("broadcast answered {status}: {body}"));
    }
    proxy.settle(QUIET, Duration::from_secs(60)).await;
    let tally = proxy.take();
    println!(
        "kirim-cost: POST /v1/broadcasts of {n} recipients ({} opted out, {} paired with a \
         user id) answered 202 in {:.2} s, each AWS call held {} ms at the proxy\n",
        opted.len(),
        pairing.paired,
        took.as_secs_f64(),
        latency.as_millis()
    );
    println!("## The creation, whole\n");
    print_table(&tally, 1.0);
    Ok(())
}

/// The dispatcher's `DispatchRetries` with `Reason` `throttled` in the platform's EMF lines
/// written after byte `from` of its log.
fn throttled_retries(log: &std::path::Path, from: u64) -> u64 {
    let Ok(text) = std::fs::read(log) else {
        return 0;
    };
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    String::from_utf8_lossy(&text[start..])
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["Reason"] == "throttled")
        .map(|v| match &v["DispatchRetries"] {
            Value::Array(values) => values.iter().filter_map(Value::as_f64).sum::<f64>() as u64,
            other => other.as_f64().unwrap_or(0.0) as u64,
        })
        .sum()
}

/// Per phase and operation: calls, write units, read units (divided by `per`); answers the
/// per-message totals by service operation.
fn print_table(t: &Tally, per: f64) -> BTreeMap<String, PerMessage> {
    println!("| Phase | Operation | Calls | Round trips | WCU | RCU |");
    println!("|---|---|---|---|---|---|");
    let mut by_op: BTreeMap<String, Units> = BTreeMap::new();
    let mut order: Vec<&String> = t.keys().collect();
    order.sort_by_key(|p| PHASES.iter().position(|x| x == p).unwrap_or(PHASES.len()));
    for phase in order {
        let mut sum = Units::default();
        for (op, u) in &t[phase] {
            if op.ends_with("(empty)") {
                continue;
            }
            let gsi = if u.gsi_wcu > 0.0 {
                format!(" (GSI {:.2})", u.gsi_wcu / per)
            } else {
                String::new()
            };
            println!(
                "| {phase} | {op} | {:.2} | {:.2} | {:.2}{gsi} | {:.2} |",
                u.calls as f64 / per,
                u.round_trips as f64 / per,
                u.wcu / per,
                u.rcu / per
            );
            sum += *u;
            *by_op.entry(op.clone()).or_default() += *u;
        }
        println!(
            "| **{phase}** | **all** | **{:.2}** | **{:.2}** | **{:.2}** | **{:.2}** |",
            sum.calls as f64 / per,
            sum.round_trips as f64 / per,
            sum.wcu / per,
            sum.rcu / per
        );
    }
    let all = by_op.values().fold(Units::default(), |mut a, u| {
        a += *u;
        a
    });
    println!(
        "| **message** | **all** | **{:.2}** | **{:.2}** | **{:.2}** | **{:.2}** |",
        all.calls as f64 / per,
        all.round_trips as f64 / per,
        all.wcu / per,
        all.rcu / per
    );
    by_op
        .into_iter()
        .map(|(k, u)| {
            (
                k,
                PerMessage {
                    calls: u.calls as f64 / per,
                    round_trips: u.round_trips as f64 / per,
                    wcu: u.wcu / per,
                    rcu: u.rcu / per,
                },
            )
        })
        .collect()
}

/// One operation's mean per message.
#[derive(Clone, Copy, Default)]
struct PerMessage {
    calls: f64,
    round_trips: f64,
    wcu: f64,
    rcu: f64,
}

/// AWS list prices (USD) used for the cost table: as known on 2025-01 (not fetched; no
/// internet here), on-demand, after free tiers, first pricing tier.
struct Prices {
    region: &'static str,
    http_api_per_m: f64,
    lambda_req_per_m: f64,
    lambda_arm_gb_s: f64,
    ddb_wru_per_m: f64,
    ddb_rru_per_m: f64,
    /// Provisioned capacity (`template.yaml` `TableCapacity: provisioned`): per write and
    /// read capacity unit-hour.
    ddb_wcu_hour: f64,
    ddb_rcu_hour: f64,
    sqs_per_m: f64,
    secrets_per_10k: f64,
    logs_per_gb: f64,
}

const PRICES: [Prices; 2] = [
    Prices {
        region: "us-east-1",
        http_api_per_m: 1.00,
        lambda_req_per_m: 0.20,
        lambda_arm_gb_s: 0.000_013_333_4,
        ddb_wru_per_m: 0.625,
        ddb_rru_per_m: 0.125,
        ddb_wcu_hour: 0.000_65,
        ddb_rcu_hour: 0.000_13,
        sqs_per_m: 0.40,
        secrets_per_10k: 0.05,
        logs_per_gb: 0.50,
    },
    Prices {
        region: "ap-southeast-1",
        http_api_per_m: 1.17,
        lambda_req_per_m: 0.20,
        lambda_arm_gb_s: 0.000_013_333_4,
        ddb_wru_per_m: 0.7125,
        ddb_rru_per_m: 0.1425,
        ddb_wcu_hour: 0.000_74,
        ddb_rcu_hour: 0.000_148,
        sqs_per_m: 0.40,
        secrets_per_10k: 0.05,
        logs_per_gb: 0.70,
    },
];

/// Requests through API Gateway per message: the send and three webhooks.
const API_REQUESTS: f64 = 4.0;
/// Lambda invocations per message besides the dispatcher's: send_api and three webhooks.
/// The dispatcher's invocation is shared by the messages of its batch (1 / batch each).
const INVOCATIONS_OWN: f64 = 4.0;
/// Billed Lambda time, an assumption (not measured here): the request's round trips to AWS
/// (measured: calls made together share one) at ~6 ms each, plus ~4 ms of code an
/// invocation, plus the dispatcher's wait for Meta's answer (~300 ms, network and Meta's
/// processing; a batch's sends overlap, so once per batch; the pacing of one number's
/// sends within a batch, up to 117 ms at 77/s for ten, is left out).
const MS_PER_ROUND_TRIP: f64 = 6.0;
const MS_CODE: f64 = 4.0;
const MS_META: f64 = 300.0;
const MEMORY_GB: f64 = 0.25; // template.yaml Globals: MemorySize 256
/// The share of provisioned capacity in use on average (auto scaling's target in
/// `template.yaml`; lower when traffic swings within a day).
const PROVISIONED_USE: f64 = 0.7;
/// The HTTP API access log line per request (template.yaml's format), in bytes.
const ACCESS_LOG_BYTES: f64 = 330.0;

fn print_cost(per_msg: &BTreeMap<String, PerMessage>, log_bytes: f64, batch: f64) {
    let sum = |prefix: &str| -> PerMessage {
        per_msg.iter().filter(|(k, _)| k.starts_with(prefix)).fold(
            PerMessage::default(),
            |a, (_, u)| PerMessage {
                calls: a.calls + u.calls,
                round_trips: a.round_trips + u.round_trips,
                wcu: a.wcu + u.wcu,
                rcu: a.rcu + u.rcu,
            },
        )
    };
    let ddb = sum("DynamoDB.");
    let sqs = sum("SQS.");
    let sm = sum("SecretsManager.");
    // On Lambda the event source deletes a batch's messages, not the function.
    let deletes = sum("SQS.DeleteMessage");
    let lambda_round_trips =
        ddb.round_trips + sqs.round_trips + sm.round_trips - deletes.round_trips;
    let invocations = INVOCATIONS_OWN + 1.0 / batch.max(1.0);
    println!(
        "Billed Lambda time a message: {:.0} ms ({lambda_round_trips:.2} round trips × {MS_PER_ROUND_TRIP} ms + {invocations:.1} invocations × {MS_CODE} ms + Meta's {MS_META} ms / {batch} a batch), at {MEMORY_GB} GB\n",
        lambda_round_trips * MS_PER_ROUND_TRIP + invocations * MS_CODE + MS_META / batch.max(1.0)
    );
    println!(
        "\n## Cost per million messages (USD; list prices as known 2025-01, see BENCHMARKS.md)\n"
    );
    println!("| Region | API Gateway HTTP API | Lambda (requests + arm64 GB-s) | DynamoDB | SQS | Secrets Manager | CloudWatch Logs | Total | Total with a Function URL webhook |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for p in &PRICES {
        let m = 1_000_000.0;
        let api = API_REQUESTS * p.http_api_per_m;
        // The webhooks on their Function URL: neither API Gateway's charge nor its access
        // log line for them.
        let webhook_api = 3.0 * (p.http_api_per_m + ACCESS_LOG_BYTES * m / 1e9 * p.logs_per_gb);
        let ms = lambda_round_trips * MS_PER_ROUND_TRIP
            + invocations * MS_CODE
            + MS_META / batch.max(1.0);
        let gb_s = ms / 1000.0 * MEMORY_GB;
        let lambda = invocations * p.lambda_req_per_m + gb_s * m * p.lambda_arm_gb_s;
        let on_demand = ddb.wcu * p.ddb_wru_per_m + ddb.rcu * p.ddb_rru_per_m;
        // One capacity unit for an hour serves 3,600 request units at full use.
        let per_unit = |hour: f64| hour / (3600.0 * PROVISIONED_USE) * m;
        let provisioned = ddb.wcu * per_unit(p.ddb_wcu_hour) + ddb.rcu * per_unit(p.ddb_rcu_hour);
        let queue = sqs.calls * p.sqs_per_m;
        let secrets = sm.calls * p.secrets_per_10k * 100.0;
        let logs = (log_bytes + API_REQUESTS * ACCESS_LOG_BYTES) * m / 1e9 * p.logs_per_gb;
        for (label, dynamo) in [
            (p.region.to_owned(), on_demand),
            (
                format!(
                    "{}, provisioned table at {:.0}% use",
                    p.region,
                    PROVISIONED_USE * 100.0
                ),
                provisioned,
            ),
        ] {
            let total = api + lambda + dynamo + queue + secrets + logs;
            println!(
                "| {label} | {api:.2} | {lambda:.2} | {dynamo:.2} | {queue:.2} | {secrets:.2} | {logs:.2} | **{total:.2}** | {:.2} |",
                total - webhook_api
            );
        }
    }
}
