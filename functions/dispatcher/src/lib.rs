//! The `dispatcher` Lambda: SQS batch → Meta, reporting partial batch failures.
//! Business rules live in the `kirim` crate; this file only wires.
//! `run` is the whole function; `main.rs` and the multi-call `kirim-lambda` binary call it.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use kirim::wiring::{lambda_deps, Function};
use lambda_runtime::{service_fn, Error, LambdaEvent};

pub async fn run() -> Result<(), lambda_runtime::Error> {
    kirim::telemetry::init_json();
    let deps = lambda_deps(Function::Dispatcher).await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(
            kirim::metrics::flushed(kirim::queue_handlers::dispatch_batch(deps, event.payload))
                .await,
        )
    }))
    .await
}
