//! The `admin_api` Lambda: API Gateway (HTTP API) → the shared `admin_api_router`.
//! Business rules live in the `kirim` crate; this file only wires.
//! `run` is the whole function; `main.rs` and the multi-call `kirim-lambda` binary call it.

use kirim::http::{admin_api_router, lambda::for_lambda};
use kirim::wiring::{lambda_deps, Function};

pub async fn run() -> Result<(), lambda_runtime::Error> {
    kirim::telemetry::init_json();
    let deps = lambda_deps(Function::AdminApi).await?;
    lambda_http::run(for_lambda(admin_api_router(deps))).await
}
