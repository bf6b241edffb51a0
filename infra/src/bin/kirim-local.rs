//! `kirim-local`: the whole platform on one port (see README "Run it locally").

use kirim_infra::local::{start, LocalConfig};

/// The allocator the Lambda binary uses (`functions/lambda`), so local mode measures what
/// Lambda runs.
#[global_allocator]
static ALLOCATOR: kirim::alloc::Mimalloc = kirim::alloc::Mimalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kirim::telemetry::init_pretty();
    let cfg = match LocalConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kirim-local: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let backend = cfg.backend;
    // Its routes are served only while it is the Meta this process talks to (local::start):
    // not with KIRIM_META_BASE_URL set.
    let sandbox_served = cfg.meta_base_url.is_none();
    let app = match start(cfg).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kirim-local: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!(
        "Kirim local mode ({backend:?} backend) listening on {}",
        app.base_url
    );
    if sandbox_served {
        println!(
            "  Meta sandbox:   {}/_sandbox/graph  (outbox: {}/_sandbox/messages)",
            app.base_url, app.base_url
        );
    }
    // Generated secrets are printed once so the developer can use them; configured ones
    // are never echoed.
    for name in &app.secrets.generated {
        let value = match *name {
            "KIRIM_OPERATOR_TOKEN" => app.secrets.operator_token.expose(),
            "KIRIM_META_APP_SECRET" => app.secrets.meta_app_secret.expose(),
            _ => app.secrets.meta_verify_token.expose(),
        };
        println!("  {name}={value}  (generated; set it to keep it stable)");
    }
    // Ctrl-C or SIGTERM drains (the batches in hand, then the requests) before it exits.
    app.run_until_stopped().await;
    std::process::ExitCode::SUCCESS
}
