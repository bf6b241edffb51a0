//! The `retention` Lambda: the daily EventBridge schedule → the retention run; the
//! one-minute schedule (input `{"task":"owed_callbacks"}`) → the owed-callback drain and
//! the sweep of audit intents whose calls died (`queue_handlers::every_minute`).
//! Business rules live in the `kirim` crate; this file only wires.
//! `run` is the whole function; `main.rs` and the multi-call `kirim-lambda` binary call it.

use kirim::wiring::{lambda_deps, Function};
use lambda_runtime::{service_fn, Error, LambdaEvent};

pub async fn run() -> Result<(), lambda_runtime::Error> {
    kirim::telemetry::init_json();
    let deps = lambda_deps(Function::Retention).await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            use kirim::queue_handlers::{self as q, ScheduledTask};
            match q::scheduled_task(&event.payload) {
                ScheduledTask::OwedCallbacks => {
                    let done = kirim::metrics::flushed(q::every_minute(deps)).await;
                    Ok::<_, Error>(serde_json::to_value(done)?)
                }
                ScheduledTask::Retention => {
                    let report = kirim::metrics::flushed(q::scheduled_retention(deps)).await?;
                    Ok(serde_json::to_value(report)?)
                }
            }
        },
    ))
    .await
}
