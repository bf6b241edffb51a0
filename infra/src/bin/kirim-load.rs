//! `kirim-load`: a load run that reconciles (see `scripts/load-reconcile`, which builds and
//! starts everything). It starts `kirim-local` as a child process against a Meta sandbox in
//! this process, sends N template messages to ordinary numbers through the HTTP API with
//! some concurrency, waits until the sandbox's status webhooks (3 per message) have all
//! reached the platform, and reconciles each tenant: every message `read`, none accepted
//! by Meta twice, credits equal to the ledger and to what Meta accepted; and overall, one
//! stored message per accepted send.
//!
//! `kirim-load [--backend memory|aws] [--messages N] [--concurrency C] [--tenants T]`
//! (aws: `AWS_ENDPOINT_URL` names the emulator).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kirim_infra::drill::{reconcile, sibling_binary, Client, ExternalMeta, Platform, SendAnswer};

const OPERATOR_TOKEN: &str = "op_load_run";
const APP_SECRET: &str = "load-run-app-secret";

struct Args {
    backend: String,
    messages: usize,
    concurrency: usize,
    tenants: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        backend: "memory".into(),
        messages: 10_000,
        concurrency: 32,
        tenants: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag} {value}: a positive number"))
        };
        match flag.as_str() {
            "--backend" if value == "memory" || value == "aws" => a.backend = value.clone(),
            "--messages" => a.messages = number()?,
            "--concurrency" => a.concurrency = number()?,
            "--tenants" => a.tenants = number()?,
            _ => return Err(format!("unknown argument {flag} {value}")),
        }
    }
    Ok(a)
}

/// One send with an Idempotency-Key, retried on 429/5xx or no answer (bounded).
async fn send(client: &Client, key: &str, to: &str) -> Option<String> {
    let idem = format!("load-{}", ulid::Ulid::new());
    for _ in 0..300 {
        match client.send(key, to, &idem).await {
            SendAnswer::Accepted(id) => return Some(id),
            SendAnswer::Refused(status, code) if status < 500 && status != 429 => {
                eprintln!("send refused: {status} {code}");
                return None;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kirim-load: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<bool, String> {
    let a = args()?;
    let binary =
        sibling_binary("kirim-local").ok_or("kirim-local is not built beside kirim-load")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let meta = ExternalMeta::start(
        APP_SECRET,
        &format!("http://{listen}/webhooks/meta"),
        Duration::from_millis(20),
        1000,
    )
    .await
    .map_err(|e| format!("sandbox: {e}"))?;
    let stack = format!("load{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut env: Vec<(String, String)> = vec![
        ("KIRIM_BACKEND".into(), a.backend.clone()),
        ("KIRIM_STACK_NAME".into(), stack),
        ("KIRIM_OPERATOR_TOKEN".into(), OPERATOR_TOKEN.into()),
        ("KIRIM_META_APP_SECRET".into(), APP_SECRET.into()),
        ("KIRIM_META_VERIFY_TOKEN".into(), "load-run-verify".into()),
        ("KIRIM_META_BASE_URL".into(), meta.graph_url.clone()),
        ("KIRIM_META_THROUGHPUT".into(), "1000".into()),
        ("KIRIM_LOCAL_POLLERS".into(), "4".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    if a.backend == "aws" && std::env::var("AWS_ENDPOINT_URL").is_err() {
        return Err("--backend aws needs AWS_ENDPOINT_URL (the moto server)".into());
    }
    env.retain(|(k, _)| !k.is_empty());
    let log = std::env::temp_dir().join(format!("kirim-load-{port}.log"));
    let platform = Platform::spawn(&binary, &env, &listen, &log, Duration::from_secs(120)).await?;
    let client = Client::new(&platform.base_url, OPERATOR_TOKEN);

    let per_tenant = a.messages.div_ceil(a.tenants);
    let opening = i64::try_from(per_tenant).map_err(|e| e.to_string())? + 10;
    let mut keys = Vec::new();
    for t in 0..a.tenants {
        let (id, key) = client
            .onboard(
                &format!("Load {t}"),
                &format!("{}", 800_000_000_000_001u64 + t as u64),
                opening,
            )
            .await?;
        client.set_throughput(&id, 1000).await?;
        keys.push(key);
    }
    println!(
        "kirim-load: {} messages, {} tenants, concurrency {}, {} backend (platform pid {}, log {})",
        a.messages,
        a.tenants,
        a.concurrency,
        a.backend,
        platform.pid(),
        log.display()
    );

    let started = Instant::now();
    let accepted = futures::stream::iter(0..a.messages)
        .map(|i| {
            let (client, key) = (client.clone(), keys[i % keys.len()].clone());
            // Ordinary numbers: the last four digits never 0001-0008.
            async move { send(&client, &key, &format!("+6012{:07}9", i)).await }
        })
        .buffer_unordered(a.concurrency)
        .filter_map(|id| async move { id })
        .count()
        .await;
    let accept_secs = started.elapsed().as_secs_f64();
    println!(
        "accepted {accepted}/{} in {accept_secs:.1} s: {:.1} accepted/s",
        a.messages,
        accepted as f64 / accept_secs
    );

    // Every webhook handed to the platform, then every message final (bounded).
    let want_webhooks = 3 * accepted as u64;
    let give_up = Instant::now() + Duration::from_secs(3600);
    let mut last_report = Instant::now();
    loop {
        let received = kirim_infra::drill::RelayCounts::get(&meta.relay.received);
        if received >= want_webhooks && meta.relay.in_flight() == 0 {
            break;
        }
        if Instant::now() > give_up {
            println!("gave up waiting for webhooks: {:?}", meta.relay);
            break;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            println!(
                "  … {} Meta requests, {received}/{want_webhooks} webhooks, {} in flight",
                meta.sandbox.received().len(),
                meta.relay.in_flight()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settle_secs = started.elapsed().as_secs_f64();

    let received = meta.sandbox.received();
    let mut ok = true;
    let (mut messages, mut meta_accepted, mut read) = (0, 0, 0);
    let mut settled_in = None;
    for attempt in 0..60 {
        ok = true;
        messages = 0;
        meta_accepted = 0;
        read = 0;
        let mut problems = Vec::new();
        for key in &keys {
            let export = client.export(key).await?;
            let credits = client.credits(key).await?;
            let r = reconcile(opening, credits, &export, &received);
            messages += r.messages;
            meta_accepted += r.accepted_by_meta;
            read += r.by_status.get("read").copied().unwrap_or_default();
            problems.extend(r.problems());
        }
        // Each accepted send is one message: a second message for one Idempotency-Key (a
        // retried send stored twice) would still balance each tenant's books above.
        if messages != accepted {
            problems.push(format!(
                "{messages} messages stored for {accepted} accepted sends"
            ));
        }
        if problems.is_empty() {
            settled_in = Some(attempt);
            break;
        }
        ok = false;
        if attempt == 59 {
            for p in &problems {
                println!("PROBLEM: {p}");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let relay = &meta.relay;
    println!(
        "webhooks: {} sent by the sandbox, {} applied (2xx), {} retried, {} dropped; expected {want_webhooks}",
        kirim_infra::drill::RelayCounts::get(&relay.received),
        kirim_infra::drill::RelayCounts::get(&relay.applied),
        kirim_infra::drill::RelayCounts::get(&relay.retried),
        kirim_infra::drill::RelayCounts::get(&relay.dropped),
    );
    println!(
        "messages: {messages} stored, {read} read, {meta_accepted} accepted by Meta once each, \
         {} Meta requests; credits == ledger == opening − accepted: {}",
        received.len(),
        if ok { "yes" } else { "NO" }
    );
    println!(
        "wall time: {settle_secs:.1} s to the last webhook ({:.1} messages/s end to end){}",
        accepted as f64 / settle_secs,
        settled_in.map_or(String::new(), |n| format!(", reconciled after {n} extra s"))
    );
    println!(
        "RESULT: {}",
        if ok { "reconciled exactly" } else { "MISMATCH" }
    );
    drop(platform);
    Ok(ok)
}
