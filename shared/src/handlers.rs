//! Event handlers for the non-HTTP Lambdas (and local mode's poller and schedule).

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};

use crate::service::dispatch::{self, Outcome};
use crate::service::{retention, Deps};

/// One SQS batch: each record is handled on its own; only failures are reported back
/// (`ReportBatchItemFailures`), so one bad message never fails its batch.
pub async fn dispatch_batch(deps: &Deps, event: SqsEvent) -> SqsBatchResponse {
    let work = event.records.into_iter().map(|record| async move {
        let id = record.message_id.clone().unwrap_or_default();
        let body = record.body.unwrap_or_default();
        match dispatch::handle(deps, &body).await {
            Outcome::Done => None,
            Outcome::RetryAfter(delay) => {
                if let Some(receipt) = record.receipt_handle.as_deref() {
                    if let Err(e) = deps.queue.retry_after(receipt, delay).await {
                        tracing::warn!(error = %e, "could not set retry delay; default visibility applies");
                    }
                }
                Some(id)
            }
            Outcome::Poison => Some(id),
        }
    });
    let failed = futures::future::join_all(work).await;
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .flatten()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

/// Local mode's equivalent of the SQS event source: receive, handle, delete or delay.
pub async fn poll_once(deps: &Deps, wait: std::time::Duration) -> usize {
    let received = match deps.queue.receive(10, wait).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "queue receive failed");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            return 0;
        }
    };
    let n = received.len();
    let work = received.into_iter().map(|m| async move {
        let result = match dispatch::handle(deps, &m.body).await {
            Outcome::Done => deps.queue.delete(&m.receipt).await,
            Outcome::RetryAfter(d) => deps.queue.retry_after(&m.receipt, d).await,
            Outcome::Poison => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "queue acknowledgement failed");
        }
    });
    futures::future::join_all(work).await;
    n
}

/// The scheduled retention run (EventBridge on AWS, a timer locally).
pub async fn scheduled_retention(deps: &Deps) -> Result<retention::RetentionReport, String> {
    retention::run(deps).await.map_err(|e| e.to_string())
}
