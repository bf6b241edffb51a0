use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use chrono::{DateTime, TimeZone, Utc};

use super::classify;
use crate::ports::{DeadLetter, DispatchQueue, Received, Redriven};
use crate::store_error::StoreError;

/// How long dead letters being listed or redriven are held out of sight (released at once
/// after, so only a crash in between leaves them hidden this long).
const HOLD_SECS: i32 = 30;
/// The most dead letters one redrive by id looks through.
const MAX_SCAN: usize = 1000;

/// A dead letter and the receipt of the receive that holds it.
struct Held {
    letter: DeadLetter,
    receipt: String,
    /// Its message group (a fair queue's tenant), kept when SQS parked it: a redrive sends
    /// it back in the same group.
    group: Option<String>,
}

/// The dispatch queue on SQS, with its dead-letter queue (redrive is SQS's own).
pub struct SqsQueue {
    client: Client,
    url: String,
    dlq_url: Option<String>,
    /// Every message sent in its tenant's message group ([`Self::fair_by_tenant`]).
    fair_by_tenant: bool,
}

impl SqsQueue {
    /// One `SendMessageBatch` of a chunk ([`batches`]), each body answered. Entry ids are
    /// the bodies' places in the chunk. SQS takes or refuses entries one by one: one it
    /// refused on its own side is sent again alone, once (the others are queued: sending
    /// them again would queue them twice); one refused as the sender's fault is not (it
    /// would be refused again). A refusal naming an entry this call did not send leaves
    /// unknown which are queued: every entry still in question fails (a duplicate at worst
    /// when its caller sends it again, never a body lost).
    async fn send_chunk(&self, chunk: &[String], secs: i32) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Result<(), StoreError>> = vec![Ok(()); chunk.len()];
        let mut left: Vec<usize> = (0..chunk.len()).collect();
        let fail_all =
            |results: &mut Vec<Result<(), StoreError>>, left: &[usize], e: StoreError| {
                for &i in left {
                    results[i] = Err(e.clone());
                }
            };
        for attempt in 1..=2 {
            let entries = left
                .iter()
                .map(|&i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&chunk[i])
                        .set_message_group_id(self.group_for(&chunk[i], None))
                        .set_delay_seconds((secs > 0).then_some(secs))
                        .build()
                        .map_err(|e| StoreError::Corrupt(format!("sqs batch entry: {e}")))
                })
                .collect::<Result<Vec<_>, _>>();
            let entries = match entries {
                Ok(entries) => entries,
                Err(e) => {
                    fail_all(&mut results, &left, e);
                    return results;
                }
            };
            let out = match self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    fail_all(&mut results, &left, classify("sqs send batch", e));
                    return results;
                }
            };
            let failed = out.failed();
            if failed.is_empty() {
                return results;
            }
            let mut named: Vec<(usize, bool)> = Vec::with_capacity(failed.len());
            for f in failed {
                match f.id().parse::<usize>() {
                    Ok(i) if left.contains(&i) && !named.iter().any(|&(j, _)| j == i) => {
                        named.push((i, f.sender_fault()))
                    }
                    _ => {
                        let e = StoreError::Unavailable(format!(
                            "sqs send batch: a refusal names no entry sent ({} refused)",
                            failed.len()
                        ));
                        fail_all(&mut results, &left, e);
                        return results;
                    }
                }
            }
            let detail = refusal_detail("sqs send batch", failed, chunk.len());
            let mut again = Vec::new();
            for (i, ours) in named {
                if ours {
                    results[i] = Err(StoreError::Rejected(detail.clone()));
                } else if attempt == 1 {
                    again.push(i);
                } else {
                    results[i] = Err(StoreError::Unavailable(detail.clone()));
                }
            }
            if again.is_empty() {
                return results;
            }
            left = again;
        }
        results
    }

    /// The IAM actions this adapter calls (`crate::iam` grants them per function).
    /// `send` and `send_batch` (SendMessageBatch is authorised as SendMessage).
    pub const SEND: &'static [&'static str] = &["sqs:SendMessage"];
    /// `retry_after`: a visibility timeout.
    pub const BACKOFF: &'static [&'static str] = &["sqs:ChangeMessageVisibility"];
    /// `receive`, `delete` and `delete_batch` (DeleteMessageBatch is authorised as
    /// DeleteMessage): local mode's poller (on Lambda the event source does it).
    pub const CONSUME: &'static [&'static str] = &["sqs:ReceiveMessage", "sqs:DeleteMessage"];
    /// On the dead-letter queue: `dead_letters` and `redrive` (held, then released or
    /// deleted).
    pub const DEAD_LETTERS: &'static [&'static str] = &[
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
    ];

    /// One `SendMessage`: in a message group (a fair queue's tenant) and after a delay
    /// when given.
    async fn send_one(
        &self,
        body: &str,
        group: Option<&str>,
        delay_secs: Option<i32>,
    ) -> Result<(), StoreError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(sqs_safe(body))
            .set_message_group_id(self.group_for(body, group))
            .set_delay_seconds(delay_secs)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("sqs send", e))
    }

    pub fn new(client: Client, url: impl Into<String>, dlq_url: Option<String>) -> Self {
        Self {
            client,
            url: url.into(),
            dlq_url,
            fair_by_tenant: false,
        }
    }

    /// Sends every message in the message group of the tenant its body names (its
    /// `tenant_id`): the standard queue becomes a fair queue, so that one tenant's backlog
    /// (a campaign, a burst at its rate limit, a redrive) does not hold back the other
    /// tenants' messages. For the dispatch queue, whose every send, hop and redrive then
    /// carries it without a caller having to say so. A body naming none is sent without.
    pub fn fair_by_tenant(mut self) -> Self {
        self.fair_by_tenant = true;
        self
    }

    /// The group `body` is sent in: the one given, else its tenant's on a fair queue.
    fn group_for(&self, body: &str, given: Option<&str>) -> Option<String> {
        match given {
            Some(g) => Some(g.to_owned()),
            None if self.fair_by_tenant => crate::service::jobs::tenant_of_body(body),
            None => None,
        }
    }
}

/// A delay as SQS's `DelaySeconds`: whole seconds rounded up (a message is never visible
/// early), at most 15 minutes.
/// A JSON body as SQS takes it. SQS refuses a message holding a character outside XML's
/// set (`InvalidMessageContents`: only tab, line feed, carriage return, U+0020–U+D7FF,
/// U+E000–U+FFFD and U+10000 up). serde_json escapes the control characters but writes the
/// noncharacters U+FFFE and U+FFFF as they are, and a session text or a template parameter
/// may hold them: a send that could never be queued, answered 503 forever. In JSON they
/// can only stand inside a string, where `\ufffe` / `\uffff` read back as the same
/// character, so the job is unchanged.
fn sqs_safe(body: &str) -> Cow<'_, str> {
    if !body.contains(['\u{FFFE}', '\u{FFFF}']) {
        return Cow::Borrowed(body);
    }
    Cow::Owned(
        body.replace('\u{FFFE}', "\\ufffe")
            .replace('\u{FFFF}', "\\uffff"),
    )
}

fn delay_seconds(delay: Duration) -> i32 {
    delay.as_secs_f64().ceil().clamp(0.0, 900.0) as i32
}

/// The most bytes of message bodies one `SendMessageBatch` carries: SQS refuses a batch
/// whose bodies together exceed the queue's largest message (`BatchRequestTooLong`), 256 KiB
/// on a queue made before August 2025 (1 MiB since), whatever the count.
const BATCH_BYTES: usize = 256 * 1024;

/// `bodies` in runs SQS takes as one batch each: at most ten, and at most [`BATCH_BYTES`]
/// together (a body larger than that alone in its run).
fn batches(bodies: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, b) in bodies.iter().enumerate() {
        if i > start && (i - start == 10 || bytes + b.len() > BATCH_BYTES) {
            out.push(&bodies[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b.len();
    }
    if start < bodies.len() {
        out.push(&bodies[start..]);
    }
    out
}

/// The entries of a batch call SQS refused, as one error (none: `Ok`). SQS says whose
/// fault each refusal is: ours will repeat (`Rejected`), its own may not (`Unavailable`).
fn batch_refusals(
    what: &str,
    failed: &[BatchResultErrorEntry],
    of: usize,
) -> Result<(), StoreError> {
    if failed.is_empty() {
        return Ok(());
    }
    let detail = refusal_detail(what, failed, of);
    Err(if failed.iter().any(|f| f.sender_fault()) {
        StoreError::Rejected(detail)
    } else {
        StoreError::Unavailable(detail)
    })
}

/// What SQS said of a batch call's refused entries, for logs: how many of the call's,
/// and their codes (never their bodies).
fn refusal_detail(what: &str, failed: &[BatchResultErrorEntry], of: usize) -> String {
    let codes: Vec<&str> = failed.iter().map(|f| f.code()).collect();
    format!(
        "{what}: {} of {of} refused ({})",
        failed.len(),
        codes.join(",")
    )
}

#[async_trait]
impl DispatchQueue for SqsQueue {
    async fn send(&self, body: &str) -> Result<(), StoreError> {
        self.send_one(body, None, None).await
    }

    async fn send_in_group(&self, group: &str, body: &str) -> Result<(), StoreError> {
        self.send_one(body, Some(group), None).await
    }

    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<(), StoreError> {
        self.send_one(body, None, Some(delay_seconds(delay))).await
    }

    async fn send_batch(&self, bodies: &[String]) -> Result<(), StoreError> {
        self.send_batch_delayed(bodies, Duration::ZERO).await
    }

    async fn send_batch_delayed(
        &self,
        bodies: &[String],
        delay: Duration,
    ) -> Result<(), StoreError> {
        self.send_batch_delayed_each(bodies, delay)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    async fn send_batch_delayed_each(
        &self,
        bodies: &[String],
        delay: Duration,
    ) -> Vec<Result<(), StoreError>> {
        let secs = delay_seconds(delay);
        let mut results = Vec::with_capacity(bodies.len());
        let escaped: Vec<String>;
        let bodies = if bodies.iter().any(|b| matches!(sqs_safe(b), Cow::Owned(_))) {
            escaped = bodies.iter().map(|b| sqs_safe(b).into_owned()).collect();
            &escaped[..]
        } else {
            bodies
        };
        for chunk in batches(bodies) {
            results.extend(self.send_chunk(chunk, secs).await);
        }
        results
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

    async fn delete_batch(&self, receipts: &[String]) -> Result<(), StoreError> {
        for chunk in receipts.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| StoreError::Corrupt(format!("sqs delete batch entry: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("sqs delete batch", e))?;
            batch_refusals("sqs delete batch", out.failed(), chunk.len())?;
        }
        Ok(())
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        // SQS counts whole seconds, at most 12 hours from the receive: capped a little under
        // (`jobs::MAX_DELAY`), as a longer one is refused, not cut.
        let cap = crate::service::jobs::MAX_DELAY.as_secs_f64();
        let secs = delay.as_secs_f64().ceil().min(cap) as i32;
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

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let Some(dlq) = &self.dlq_url else {
            return Ok(Vec::new());
        };
        let held = self.hold(dlq, max).await?;
        self.release(dlq, &held).await;
        Ok(held.into_iter().map(|h| h.letter).collect())
    }

    async fn redrive(&self, ids: Option<&[String]>, max: usize) -> Result<Redriven, StoreError> {
        let Some(dlq) = &self.dlq_url else {
            return Ok(Redriven::default());
        };
        // All: one more than moved tells whether more are left. By id: look further.
        let scan = match ids {
            None => max.saturating_add(1),
            Some(_) => MAX_SCAN,
        };
        let mut held = self.hold(dlq, scan).await?;
        let mut chosen = Vec::new();
        let mut rest = Vec::new();
        for h in held.drain(..) {
            let wanted = ids.is_none_or(|ids| ids.contains(&h.letter.id));
            if wanted && chosen.len() < max {
                chosen.push(h);
            } else {
                rest.push(h);
            }
        }
        let more = ids.is_none() && !rest.is_empty();
        // The letters not chosen are released after the chosen ones are moved: released
        // first (up to a thousand), the chosen ones' 30 s hold could lapse before their
        // move, for a retried call to move them again.
        // Back to the source first, each answered on its own (SQS takes a batch's entries,
        // and a call's batches, one by one): one not sent stays parked (released); one sent
        // leaves the dead-letter queue, and is moved whatever else failed (released too, it
        // would be moved again: a duplicate).
        // A letter of a message group (a status callback: its tenant) goes back in its
        // group, one `SendMessage` each (a batch's entries here carry none), so a tenant's
        // redriven backlog is still paced fairly with the others'.
        let (grouped, plain): (Vec<Held>, Vec<Held>) =
            chosen.into_iter().partition(|h| h.group.is_some());
        let bodies: Vec<String> = plain.iter().map(|h| h.letter.body.clone()).collect();
        let mut sent = self.send_batch_delayed_each(&bodies, Duration::ZERO).await;
        for h in &grouped {
            sent.push(
                self.send_one(&h.letter.body, h.group.as_deref(), None)
                    .await,
            );
        }
        let chosen: Vec<Held> = plain.into_iter().chain(grouped).collect();
        let mut moved = Vec::with_capacity(chosen.len());
        let mut unsent = Vec::new();
        let mut failure = None;
        for (h, sent) in chosen.into_iter().zip(sent) {
            if let Err(e) = sent {
                failure.get_or_insert(e);
                unsent.push(h);
                continue;
            }
            // On the source queue now: a delete that fails leaves it parked too, seen again
            // once its hold ends (a duplicate the consumers' checks make harmless); the
            // others go on.
            if let Err(e) = self
                .client
                .delete_message()
                .queue_url(dlq)
                .receipt_handle(&h.receipt)
                .send()
                .await
            {
                tracing::warn!(error = %classify("sqs delete dlq", e), "a redriven dead letter stays parked");
            }
            moved.push(h.letter.id);
        }
        // Only the chosen ones the source queue refused are `still_parked`, not the
        // letters left alone (released with them).
        let unsent_ids: Vec<String> = unsent.iter().map(|h| h.letter.id.clone()).collect();
        unsent.extend(rest);
        self.release(dlq, &unsent).await;
        match failure {
            // Nothing moved: the caller hears why.
            Some(e) if moved.is_empty() => Err(e),
            _ => Ok(Redriven {
                moved,
                more: more || (ids.is_none() && !unsent_ids.is_empty()),
                unsent: unsent_ids,
            }),
        }
    }
}

impl SqsQueue {
    /// Receives up to `max` dead letters, holding each out of sight for [`HOLD_SECS`].
    async fn hold(&self, dlq: &str, max: usize) -> Result<Vec<Held>, StoreError> {
        let mut held: Vec<Held> = Vec::new();
        while held.len() < max {
            let want = (max - held.len()).min(10) as i32;
            let out = self
                .client
                .receive_message()
                .queue_url(dlq)
                .max_number_of_messages(want)
                .visibility_timeout(HOLD_SECS)
                // Long polling asks every SQS host: a short poll may miss some.
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    self.release(dlq, &held).await;
                    return Err(classify("sqs receive dlq", e));
                }
            };
            let before = held.len();
            for m in out.messages() {
                let attr = |name: MessageSystemAttributeName| {
                    m.attributes().and_then(|a| a.get(&name)).cloned()
                };
                let (Some(id), Some(receipt), Some(body)) =
                    (m.message_id(), m.receipt_handle(), m.body())
                else {
                    continue;
                };
                if held.iter().any(|h| h.letter.id == id) {
                    continue;
                }
                let sent_at = attr(MessageSystemAttributeName::SentTimestamp)
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
                held.push(Held {
                    letter: DeadLetter {
                        id: id.to_owned(),
                        body: body.to_owned(),
                        receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(1),
                        sent_at,
                    },
                    receipt: receipt.to_owned(),
                    group: attr(MessageSystemAttributeName::MessageGroupId),
                });
            }
            if held.len() == before {
                break;
            }
        }
        Ok(held)
    }

    /// Makes held dead letters visible again (best effort: otherwise they reappear when
    /// the hold lapses).
    /// Makes held letters visible again, ten to a call (`ChangeMessageVisibilityBatch`):
    /// one call each made releasing a redrive's thousand scanned letters take seconds. One
    /// not released stays hidden until its hold lapses (logged).
    async fn release(&self, dlq: &str, held: &[Held]) {
        use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry as Entry;
        for chunk in held.chunks(10) {
            let entries: Result<Vec<Entry>, _> = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    Entry::builder()
                        .id(i.to_string())
                        .receipt_handle(&h.receipt)
                        .visibility_timeout(0)
                        .build()
                })
                .collect();
            let entries = match entries {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "dead letters stay hidden until their hold lapses");
                    continue;
                }
            };
            match self
                .client
                .change_message_visibility_batch()
                .queue_url(dlq)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) if !out.failed.is_empty() => {
                    tracing::warn!(
                        failed = out.failed.len(),
                        "dead letters stay hidden until their hold lapses"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %classify("sqs release dlq", e), "dead letters stay hidden until their hold lapses");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{batches, sqs_safe, BATCH_BYTES};
    use proptest::prelude::*;

    /// SQS's characters (`SendMessage`'s `MessageBody`).
    fn sqs_takes(c: char) -> bool {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
            || c >= '\u{10000}'
    }

    proptest! {
        #![proptest_config(crate::props::config(2_000))]

        #[test]
        fn any_text_in_a_json_body_reaches_sqs_in_its_characters_and_reads_back_whole(
            text in prop_oneof![
                any::<String>(),
                proptest::collection::vec(
                    prop_oneof![Just('\u{FFFE}'), Just('\u{FFFF}'), Just('a'), Just('"'), Just('\\'), any::<char>()],
                    0..40,
                ).prop_map(|v| v.into_iter().collect::<String>()),
            ]
        ) {
            let body = serde_json::json!({"text": {"body": text}}).to_string();
            let safe = sqs_safe(&body);
            prop_assert!(safe.chars().all(sqs_takes), "{safe:?}");
            let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
            prop_assert_eq!(back["text"]["body"].as_str(), Some(text.as_str()));
        }
    }

    #[test]
    fn a_body_without_noncharacters_is_sent_as_it_is() {
        let body = r#"{"text":{"body":"Terima kasih \ud83d\ude00 😀"}}"#;
        assert!(matches!(sqs_safe(body), std::borrow::Cow::Borrowed(b) if b == body));
    }

    #[test]
    fn a_batch_is_cut_at_ten_bodies_or_at_sqss_bytes_whichever_comes_first() {
        let lens = |runs: Vec<&[String]>| runs.iter().map(|r| r.len()).collect::<Vec<_>>();
        let small: Vec<String> = (0..23).map(|i| format!("job-{i}")).collect();
        assert_eq!(lens(batches(&small)), vec![10, 10, 3]);
        assert!(batches(&[]).is_empty());
        // Four bodies of 100 KiB: two fit, a third would pass 256 KiB.
        let big: Vec<String> = (0..4).map(|_| "x".repeat(100 * 1024)).collect();
        assert_eq!(lens(batches(&big)), vec![2, 2]);
        // One larger than the limit goes alone; the small ones around it are not held back.
        let mixed = vec![
            "a".to_owned(),
            "y".repeat(BATCH_BYTES + 1),
            "b".to_owned(),
            "c".to_owned(),
        ];
        assert_eq!(lens(batches(&mixed)), vec![1, 1, 2]);
        // Exactly the limit fits in one.
        let exact = vec!["z".repeat(BATCH_BYTES / 2), "z".repeat(BATCH_BYTES / 2)];
        assert_eq!(lens(batches(&exact)), vec![2]);
    }
}
