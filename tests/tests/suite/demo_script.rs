//! README's "Sending rules, scripted": `scripts/demo-sending-rules.sh` run against local
//! mode, as a reader would, so that the script and the output the README shows keep
//! matching the API.

use kirim::config::Backend;
use kirim_tests::{spawn_app, META_APP_SECRET, OPERATOR_TOKEN};

#[tokio::test]
async fn the_sending_rules_demo_script_runs_as_the_readme_shows() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "python3 is needed to run the demo script (with curl; README, \"The two commands\")"
        );
    }
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is needed to run the demo script (README, \"The two commands\")");
    }
    let app = spawn_app(Backend::Memory).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/demo-sending-rules.sh"
    );
    let base = app.url("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(script)
            .env("KIRIM_URL", base)
            .env("KIRIM_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("KIRIM_META_APP_SECRET", META_APP_SECRET)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The lines README shows, in order.
    let expected = [
        "webhook 200",
        r#"422 {"error":{"code":"recipient_opted_out""#,
        "webhook 200",
        r#"202 {"id":"#,
        "credits now: 1",
        r#"402 {"error":{"code":"insufficient_credits""#,
        r#"201 {"balance":1000"#,
        r#""accepted":1000,"skipped_opted_out":0"#,
        "broadcast completed:",
        "'read': 1000",
        "(enqueued 1000 of 1000)",
        "credits now: 0",
    ];
    let mut rest: &str = &stdout;
    for line in expected {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} next in:\n{stdout}"));
        rest = &rest[at + line.len()..];
    }
}
