use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;

use super::classify;
use crate::ports::{DispatchQueue, Received};
use crate::store_error::StoreError;

/// The dispatch queue on SQS, with its dead-letter queue (redrive is SQS's own).
pub struct SqsQueue {
    client: Client,
    url: String,
    dlq_url: Option<String>,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>, dlq_url: Option<String>) -> Self {
        Self {
            client,
            url: url.into(),
            dlq_url,
        }
    }
}

#[async_trait]
impl DispatchQueue for SqsQueue {
    async fn send(&self, body: &str) -> Result<(), StoreError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("sqs send", e))
    }

    async fn send_batch(&self, bodies: &[String]) -> Result<(), StoreError> {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .map_err(|e| StoreError::Corrupt(format!("sqs batch entry: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("sqs send batch", e))?;
            if !out.failed().is_empty() {
                let detail = format!(
                    "sqs send batch: {} of {} refused ({})",
                    out.failed().len(),
                    chunk.len(),
                    out.failed()
                        .iter()
                        .map(|f| f.code())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                // SQS says whose fault each refusal is: ours will repeat, its own may not.
                return Err(if out.failed().iter().any(|f| f.sender_fault()) {
                    StoreError::Rejected(detail)
                } else {
                    StoreError::Unavailable(detail)
                });
            }
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| classify("sqs receive", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                Some(Received {
                    receipt: m.receipt_handle()?.to_owned(),
                    body: m.body()?.to_owned(),
                    receive_count,
                })
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("sqs delete", e))
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        // SQS counts whole seconds, at most 12 hours.
        let secs = delay.as_secs_f64().ceil().min(43_200.0) as i32;
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("sqs change visibility", e))
    }

    async fn dead_letters(&self) -> Result<Vec<String>, StoreError> {
        let Some(dlq) = &self.dlq_url else {
            return Ok(Vec::new());
        };
        // A peek: visibility 0 leaves them on the queue for operators.
        let out = self
            .client
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| classify("sqs receive dlq", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| m.body().map(str::to_owned))
            .collect())
    }
}
