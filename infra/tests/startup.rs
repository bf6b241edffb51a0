//! What `kirim-local` prints when it starts (README "Run it locally").

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The lines `kirim-local` (memory backend, any free port, `env` added) prints up to its
/// generated secrets: none is configured, so all three are generated and printed last.
fn startup_lines(env: &[(&str, &str)]) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kirim-local"))
        .env_clear()
        .env("KIRIM_BACKEND", "memory")
        .env("KIRIM_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kirim-local starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<String> = Vec::new();
    while lines.iter().filter(|l| l.contains("(generated;")).count() < 3 {
        // Ended (the process exited) or silent for a minute: the assertions say what is missing.
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            break;
        };
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn the_meta_sandbox_is_announced_only_when_it_is_served() {
    let served = startup_lines(&[]);
    assert!(
        served
            .iter()
            .any(|l| l.contains("Meta sandbox:") && l.contains("/_sandbox/graph")),
        "{served:#?}"
    );

    // Another Meta: the sandbox's routes are not served, so they are not announced.
    let elsewhere = startup_lines(&[("KIRIM_META_BASE_URL", "http://127.0.0.1:9")]);
    assert!(
        elsewhere.iter().any(|l| l.contains("listening on")),
        "{elsewhere:#?}"
    );
    assert!(
        !elsewhere.iter().any(|l| l.contains("_sandbox")),
        "{elsewhere:#?}"
    );
}
