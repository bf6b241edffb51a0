//! The `admin_api` Lambda: API Gateway (HTTP API) → the shared `admin_api_router`.
//! Business rules live in the `kirim` crate; this file only wires.

use kirim::http::{admin_api_router, lambda::for_lambda};
use kirim::wiring::{lambda_deps, Function};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    kirim::telemetry::init_json();
    let deps = lambda_deps(Function::AdminApi).await?;
    lambda_http::run(for_lambda(admin_api_router(deps))).await
}
