//! A restart drill on the aws backend against moto: `kirim-local` runs as its own OS
//! process and is killed with `kill -9` in the middle of a burst that includes the
//! sandbox's failure numbers, then started again on the same port and the same moto state.
//! The Meta sandbox lives in this test process, so its record of what it accepted survives.
//!
//! Two clocks are shortened so the test stays short: the dispatch queue's visibility
//! timeout (360 s in template.yaml: how long a dead dispatcher's messages stay invisible)
//! is set to 6 s on this test's own queue, and `KIRIM_SENDING_DEADLINE` is 12 s.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kirim_infra::drill::{is_final, reconcile, Client, ExternalMeta, Platform, SendAnswer};

const OPERATOR_TOKEN: &str = "op_restart_drill";
const APP_SECRET: &str = "restart-drill-app-secret";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// moto: `KIRIM_TEST_MOTO_URL` (scripts/test sets it), else one started from `.venv`.
struct Moto {
    url: String,
    child: Option<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn moto() -> Moto {
    if let Ok(url) = std::env::var("KIRIM_TEST_MOTO_URL") {
        return Moto { url, child: None };
    }
    let root = workspace_root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "moto is not installed: run ./scripts/test, or set KIRIM_TEST_MOTO_URL"
    );
    let port = free_port();
    let child = Command::new(python)
        .arg(root.join("scripts/moto_server.py"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..150 {
        if reqwest::get(format!("{url}/moto-api/")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto {
        url,
        child: Some(child),
    }
}

/// Polls `check` every 250 ms until it answers true or `bound` passes; answers the last.
async fn eventually<F, Fut>(bound: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The burst: ordinary numbers and the failure numbers 0001, 0003, 0004, 0007, 0008.
fn burst(n: usize) -> Vec<String> {
    const PATTERN: [&str; 12] = [
        "", "", "0001", "", "0003", "", "0004", "", "0007", "", "0008", "",
    ];
    (0..n)
        .map(|i| match PATTERN[i % PATTERN.len()] {
            "" => format!("+6011{:04}{:04}", i, 1000 + i),
            tail => format!("+6011{:04}{tail}", i),
        })
        .collect()
}

/// What the client learned about one send.
#[derive(Debug)]
struct Sent {
    to: String,
    id: Option<String>,
    refused: Option<(u16, String)>,
    /// Attempts that got no answer (the kill, or the platform down) and were retried
    /// with the same Idempotency-Key.
    cut: usize,
}

/// A careful client: one Idempotency-Key per message, retried while there is no answer
/// (or a 5xx/429) until the platform answers, within `bound`.
async fn send_retrying(client: &Client, key: &str, to: &str, bound: Duration) -> Sent {
    let idem = format!("drill-{}", ulid::Ulid::new());
    let deadline = tokio::time::Instant::now() + bound;
    let mut cut = 0;
    loop {
        match client.send(key, to, &idem).await {
            SendAnswer::Accepted(id) => {
                return Sent {
                    to: to.into(),
                    id: Some(id),
                    refused: None,
                    cut,
                }
            }
            SendAnswer::Refused(status, code) if status < 500 && status != 429 => {
                return Sent {
                    to: to.into(),
                    id: None,
                    refused: Some((status, code)),
                    cut,
                }
            }
            SendAnswer::Refused(..) => {}
            SendAnswer::NoAnswer => cut += 1,
        }
        if tokio::time::Instant::now() > deadline {
            return Sent {
                to: to.into(),
                id: None,
                refused: None,
                cut,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_platform_killed_mid_burst_and_restarted_ends_every_message_once_with_credits_equal_to_the_ledger(
) {
    let moto = moto().await;
    let stack = format!("r{}", ulid::Ulid::new().to_string().to_lowercase());
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&moto.url)).await;
    let resources = kirim_infra::bootstrap::ensure_stack(&sdk, &stack)
        .await
        .expect("the stack on moto");
    let queue = resources
        .queue_url("DispatchQueue")
        .expect("a dispatch queue");
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    // Local mode sets the template's attributes whenever it starts: shorten after each start.
    let shorten_visibility = || async {
        sqs.set_queue_attributes()
            .queue_url(&queue)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                "6",
            )
            .send()
            .await
            .expect("shorter visibility timeout");
    };

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let meta = ExternalMeta::start(
        APP_SECRET,
        &format!("http://{listen}/webhooks/meta"),
        Duration::from_millis(50),
        80,
    )
    .await
    .expect("the sandbox");
    let env: Vec<(String, String)> = [
        ("KIRIM_BACKEND", "aws"),
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
        ("KIRIM_STACK_NAME", stack.as_str()),
        ("KIRIM_OPERATOR_TOKEN", OPERATOR_TOKEN),
        ("KIRIM_META_APP_SECRET", APP_SECRET),
        ("KIRIM_META_VERIFY_TOKEN", "restart-drill-verify"),
        ("KIRIM_META_BASE_URL", meta.graph_url.as_str()),
        ("KIRIM_DISPATCH_MAX_ATTEMPTS", "3"),
        ("KIRIM_DISPATCH_BACKOFF", "200ms"),
        ("KIRIM_META_TIMEOUT", "5s"),
        ("KIRIM_SENDING_DEADLINE", "12s"),
        ("KIRIM_LOCAL_POLLERS", "2"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_kirim-local"));
    let log = std::env::temp_dir().join(format!("kirim-restart-{stack}.log"));
    let ready = Duration::from_secs(60);
    let mut platform = Platform::spawn(&binary, &env, &listen, &log, ready)
        .await
        .expect("kirim-local starts");
    shorten_visibility().await;

    let client = Client::new(&platform.base_url, OPERATOR_TOKEN);
    let opening = 100;
    let (_, key_a) = client
        .onboard("Kedai Restart", "700000000000001", opening)
        .await
        .expect("tenant A");
    let (tenant_b, key_b) = client
        .onboard("Kedai Token", "700000000000002", 10)
        .await
        .expect("tenant B");

    // The burst, four at a time, through the kill and the restart.
    let numbers = burst(48);
    let answered = Arc::new(AtomicUsize::new(0));
    let sender = {
        let client = client.clone();
        let key_a = key_a.clone();
        let key_b = key_b.clone();
        let answered = answered.clone();
        tokio::spawn(async move {
            // Tenant B's only messages: 0006 (token expired) suspends B, not A.
            let b = futures::future::join_all(
                ["+601190000006", "+601190010006"]
                    .map(|to| send_retrying(&client, &key_b, to, Duration::from_secs(120))),
            )
            .await;
            let a = futures::stream::iter(numbers)
                .map(|to| {
                    let (client, key, answered) = (client.clone(), key_a.clone(), answered.clone());
                    async move {
                        let s = send_retrying(&client, &key, &to, Duration::from_secs(120)).await;
                        answered.fetch_add(1, Ordering::SeqCst);
                        s
                    }
                })
                .buffered(4)
                .collect::<Vec<_>>()
                .await;
            (a, b)
        })
    };

    // Kill once Meta has been called a few times, before the burst is over.
    let called = eventually(Duration::from_secs(120), || async {
        meta.sandbox.received().len() >= 10
    })
    .await;
    assert!(called, "the sandbox received 10 requests before the kill");
    platform.kill_hard();
    let killed_at = chrono::Utc::now();
    let at_kill_answered = answered.load(Ordering::SeqCst);
    let at_kill_meta = meta.sandbox.received().len();
    eprintln!(
        "restart drill: killed pid {} after {at_kill_answered} of 48 sends answered, \
         {at_kill_meta} Meta requests",
        platform.pid()
    );
    assert!(
        at_kill_answered < 48,
        "the kill came before every send was answered ({at_kill_answered})"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let platform = Platform::spawn(&binary, &env, &listen, &log, ready)
        .await
        .expect("kirim-local starts again");
    shorten_visibility().await;

    let (sent_a, sent_b) = sender.await.expect("the burst");
    for s in &sent_a {
        assert!(
            s.id.is_some(),
            "every send to A was accepted in the end: …{} {:?}",
            &s.to[s.to.len() - 4..],
            s.refused
        );
    }
    for s in &sent_b {
        assert!(
            s.id.is_some()
                || s.refused
                    .as_ref()
                    .is_some_and(|(st, code)| *st == 403 && code == "tenant_suspended"),
            "a send to suspended B is accepted or refused as suspended: {:?}",
            s.refused
        );
    }
    let ids_a: Vec<&str> = sent_a.iter().filter_map(|s| s.id.as_deref()).collect();
    let cut: usize = sent_a.iter().chain(&sent_b).map(|s| s.cut).sum();

    // Wait (bounded) until every message of both tenants is final and the relay is idle.
    let resume = || async {
        let _ = client
            .http
            .post(format!(
                "{}/v1/platform/tenants/{tenant_b}/resume",
                platform.base_url
            ))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await;
    };
    let all_final = |key: String| {
        let client = client.clone();
        async move {
            client.export(&key).await.is_ok_and(|lines| {
                lines
                    .iter()
                    .filter(|l| l["type"] == "message")
                    .all(is_final)
            })
        }
    };
    let settled = eventually(Duration::from_secs(150), || async {
        resume().await;
        meta.relay.in_flight() == 0
            && all_final(key_a.clone()).await
            && all_final(key_b.clone()).await
    })
    .await;

    let received = meta.sandbox.received();
    let export_a = client.export(&key_a).await.expect("export A");
    let credits_a = client.credits(&key_a).await.expect("credits A");
    let a = reconcile(opening, credits_a, &export_a, &received);
    let export_b = client.export(&key_b).await.expect("export B");
    let credits_b = client.credits(&key_b).await.expect("credits B");
    let b = reconcile(10, credits_b, &export_b, &received);
    eprintln!(
        "restart drill: A {:?}, {} Meta requests, {} accepted, outcome_unknown {:?}, \
         credits {} = ledger {}; B {:?}, credits {}; {} cut sends retried; relay {:?}; log {}",
        a.by_status,
        a.meta_requests,
        a.accepted_by_meta,
        a.outcome_unknown,
        a.credits,
        a.ledger_sum,
        b.by_status,
        b.credits,
        cut,
        meta.relay,
        log.display()
    );

    assert!(settled, "every message became final: {:?}", a.not_final);
    // (a) every message the API accepted is final, and the idempotent retries of cut
    // sends made no second message.
    let exported: Vec<&str> = export_a
        .iter()
        .filter(|l| l["type"] == "message")
        .filter_map(|l| l["id"].as_str())
        .collect();
    let mut want = ids_a.clone();
    want.sort_unstable();
    let mut got = exported.clone();
    got.sort_unstable();
    assert_eq!(got, want, "A's messages are exactly the 48 accepted ones");
    // (b) no double send, (c) credits == opening + the ledger == opening − what Meta
    // accepted (or, for an answer lost in the kill, may have accepted).
    assert_eq!(a.problems(), Vec::<String>::new(), "tenant A reconciles");
    assert_eq!(b.problems(), Vec::<String>::new(), "tenant B reconciles");
    // An outcome is unknown only when a request reached Meta and its answer was lost, or
    // when the killed process had claimed the message: a claim the emulator applied after
    // its caller died, or a request cut short on its way, leaves Kirim unable to tell
    // whether Meta got it (so it charges, as for a timeout). The restarted process never
    // leaves a message it claimed itself unknown without Meta having seen it.
    for u in a
        .outcome_unknown
        .iter()
        .filter(|u| u.ends_with("requests=0"))
    {
        let id = u.split_whitespace().next().unwrap_or_default();
        let claimed_at = export_a
            .iter()
            .find(|l| l["type"] == "message" && l["id"] == id)
            .and_then(|m| m["events"].as_array())
            .and_then(|events| events.iter().rfind(|e| e["status"] == "sending"))
            .and_then(|e| e["at"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        assert!(
            claimed_at.is_some_and(|t| t <= killed_at),
            "a message Meta never saw was left unknown (and charged) though the killed \
             process had not claimed it: {u} (claimed {claimed_at:?}, killed {killed_at})"
        );
    }
    assert_eq!(b.accepted_by_meta, 0, "Meta accepted nothing for tenant B");
    assert_eq!(b.credits, 10, "tenant B's failed sends were refunded");
    assert!(
        sent_b.iter().any(|s| s.id.is_some()),
        "tenant B's first 0006 was accepted by the API"
    );
    assert!(
        a.accepted_by_meta >= 20,
        "the ordinary, 0001, 0003 and 0008 messages reached Meta: {}",
        a.accepted_by_meta
    );
    drop(platform);
}
