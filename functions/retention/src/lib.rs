//! The `retention` Lambda: the daily EventBridge schedule → the retention run.
//! Business rules live in the `kirim` crate; this file only wires.
//! `run` is the whole function; `main.rs` and the multi-call `kirim-lambda` binary call it.

use kirim::wiring::{lambda_deps, Function};
use lambda_runtime::{service_fn, Error, LambdaEvent};

pub async fn run() -> Result<(), lambda_runtime::Error> {
    kirim::telemetry::init_json();
    let deps = lambda_deps(Function::Retention).await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |_: LambdaEvent<serde_json::Value>| async move {
            let report =
                kirim::metrics::flushed(kirim::queue_handlers::scheduled_retention(deps)).await?;
            Ok::<_, Error>(serde_json::to_value(report)?)
        },
    ))
    .await
}
