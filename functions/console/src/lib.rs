//! The `console` Lambda: API Gateway (HTTP API, `ANY /console/{proxy+}`) → the shared
//! console router (HTML pages for tenants' people). Business rules live in the `kirim`
//! crate; this file only wires.
//! `run` is the whole function; `main.rs` and the multi-call `kirim-lambda` binary call it.

use kirim::console::{console_router, ConsoleOptions};
use kirim::http::lambda::for_lambda;
use kirim::wiring::{lambda_deps, Function};

pub async fn run() -> Result<(), lambda_runtime::Error> {
    kirim::telemetry::init_json();
    let deps = lambda_deps(Function::Console).await?;
    let options = ConsoleOptions {
        secure_cookies: true,
    };
    lambda_http::run(for_lambda(console_router(deps, options))).await
}
