//! The `webhook` Lambda: API Gateway (HTTP API) → the shared `webhook_router`.
//! Business rules live in the `kirim` crate; this file only wires.

use kirim::http::{lambda::for_lambda, webhook_router};
use kirim::wiring::{lambda_deps, Function};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    kirim::telemetry::init_json();
    let deps = lambda_deps(Function::Webhook).await?;
    lambda_http::run(for_lambda(webhook_router(deps))).await
}
