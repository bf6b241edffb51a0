//! CloudWatch metrics as Embedded Metric Format (EMF) lines: one JSON object per line
//! on stdout, which Lambda ships to CloudWatch Logs and CloudWatch turns into metrics in
//! the `Kirim` namespace. No tenant id or phone number is ever a dimension (cardinality,
//! and privacy): the logs carry those.
//!
//! | metric | unit | dimension |
//! |---|---|---|
//! | `MessagesSent` | Count | `Outcome` = `sent` |
//! | `MessagesFailed` | Count | `ErrorClass` (`permanent`, `tenant_stop`, `suppress`, `exhausted`, `outcome_unknown`, ...) |
//! | `DispatchRetries` | Count | `Reason` (`transient`, `delayed`, `storage`, `throttled`, `ambiguous`) |
//! | `Throttles` | Count | `Source` (`limiter_wait`, `limiter_full`, `meta_130429`) |
//! | `WebhookLag` | Milliseconds | `Status` (`sent`, `delivered`, `read`, `failed`) |
//! | `RateLimited` | Count | `Scope` (`request`, `webhook_bad_signatures`, `login`) |

//!
//! Lines are written to a buffer in the process and reach stdout in one write per
//! [`flush`]: each Lambda invocation flushes when it ends (`http::lambda::for_lambda`,
//! [`flushed`] around the queue and schedule handlers), a long-running server every
//! [`FLUSH_EVERY`] ([`flush_every`]), and the buffer flushes itself past [`FLUSH_AT`]
//! bytes. One `write` syscall per status was 6% of the webhook's CPU (BENCHMARKS.md
//! "Webhook side by side"); a line is also written without building a JSON tree.

use std::sync::Mutex;
use std::time::Duration;

pub const NAMESPACE: &str = "Kirim";

/// A long-running server's flush interval.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Buffered bytes past which an emit flushes at once.
pub const FLUSH_AT: usize = 16 * 1024;

/// EMF lines waiting for their write.
struct Lines(Mutex<String>);

impl Lines {
    /// Appends one line; answers whether the buffer is past [`FLUSH_AT`].
    fn push(&self, name: &str, unit: Unit, value: f64, dims: &[(&str, &str)], at_ms: i64) -> bool {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        push_emf_line(&mut buf, name, unit, value, dims, at_ms);
        buf.len() >= FLUSH_AT
    }

    /// Takes what is buffered (whole lines, each ending in a newline).
    fn take(&self) -> String {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *buf)
    }
}

static LINES: Lines = Lines(Mutex::new(String::new()));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// `s` as a JSON string (quoted and escaped).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `v` as a JSON number (`null` if it is not finite, as JSON has no NaN).
fn push_json_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        let mut b = ryu::Buffer::new();
        out.push_str(b.format_finite(v));
    } else {
        out.push_str("null");
    }
}

/// Appends one EMF line (with its newline) for one metric value with its dimensions,
/// stamped `at_ms` (epoch ms).
fn push_emf_line(
    out: &mut String,
    name: &str,
    unit: Unit,
    value: f64,
    dims: &[(&str, &str)],
    at_ms: i64,
) {
    out.push_str("{\"_aws\":{\"Timestamp\":");
    out.push_str(itoa::Buffer::new().format(at_ms));
    out.push_str(",\"CloudWatchMetrics\":[{\"Namespace\":");
    push_json_str(out, NAMESPACE);
    out.push_str(",\"Dimensions\":[[");
    for (i, (k, _)) in dims.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, k);
    }
    out.push_str("]],\"Metrics\":[{\"Name\":");
    push_json_str(out, name);
    out.push_str(",\"Unit\":");
    push_json_str(out, unit.as_str());
    out.push_str("}]}]}");
    for (k, v) in dims {
        if *k == name || *k == "_aws" {
            continue; // the value and the metadata keep their keys
        }
        out.push(',');
        push_json_str(out, k);
        out.push(':');
        push_json_str(out, v);
    }
    out.push(',');
    push_json_str(out, name);
    out.push(':');
    push_json_f64(out, value);
    out.push_str("}\n");
}

/// One EMF line (without its newline) for one metric value with its dimensions,
/// stamped `at_ms` (epoch ms).
pub fn emf_line(name: &str, unit: Unit, value: f64, dims: &[(&str, &str)], at_ms: i64) -> String {
    let mut line = String::with_capacity(256);
    push_emf_line(&mut line, name, unit, value, dims, at_ms);
    line.pop();
    line
}

/// Buffers one metric value as an EMF line (stdout at the next [`flush`]).
pub fn emit(name: &str, unit: Unit, value: f64, dims: &[(&str, &str)]) {
    let at_ms = chrono::Utc::now().timestamp_millis();
    if LINES.push(name, unit, value, dims, at_ms) {
        flush();
    }
}

/// Writes every buffered line to stdout in one write.
pub fn flush() {
    let lines = LINES.take();
    if lines.is_empty() {
        return;
    }
    // One `print!` of whole lines is one write (stdout's line buffer passes complete lines
    // straight through); through `print!`, a test's output capture takes them too.
    print!("{lines}");
}

/// Whether a buffered line contains `needle` (tests of who flushes).
#[cfg(test)]
pub(crate) fn buffered_contains(needle: &str) -> bool {
    LINES
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(needle)
}

/// Runs `fut` (one invocation's work), then flushes what it emitted.
pub async fn flushed<F: std::future::Future>(fut: F) -> F::Output {
    let out = fut.await;
    flush();
    out
}

/// Flushes every `every`, for a long-running server (local mode); never returns.
pub async fn flush_every(every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        flush();
    }
}

/// Counts one occurrence.
pub fn count(name: &str, dim: (&str, &str)) {
    emit(name, Unit::Count, 1.0, &[dim]);
}

/// A request refused by a limit on use (API.md "Limits on use").
pub fn limited(scope: &str) {
    count("RateLimited", ("Scope", scope));
}

pub fn sent() {
    count("MessagesSent", ("Outcome", "sent"));
}

pub fn failed(error_class: &str) {
    count("MessagesFailed", ("ErrorClass", error_class));
}

pub fn retry(reason: &str) {
    count("DispatchRetries", ("Reason", reason));
}

pub fn throttle(source: &str) {
    count("Throttles", ("Source", source));
}

/// How long after Meta's status timestamp the webhook was applied.
pub fn webhook_lag(status: &str, lag_ms: i64) {
    emit(
        "WebhookLag",
        Unit::Milliseconds,
        lag_ms.max(0) as f64,
        &[("Status", status)],
    );
}

/// A piece of a verified webhook Kirim did not understand was skipped (`piece`: body,
/// entry, change, field, status or message).
pub fn webhook_skipped(piece: &str) {
    count("WebhookPieceSkipped", ("Piece", piece));
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn an_emf_line_is_one_json_object_with_cloudwatch_metadata() {
        let line = emf_line(
            "MessagesFailed",
            Unit::Count,
            1.0,
            &[("ErrorClass", "permanent")],
            1_764_000_000_000,
        );
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            v,
            json!({
                "_aws": {
                    "Timestamp": 1_764_000_000_000i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "Kirim",
                        "Dimensions": [["ErrorClass"]],
                        "Metrics": [{"Name": "MessagesFailed", "Unit": "Count"}],
                    }],
                },
                "ErrorClass": "permanent",
                "MessagesFailed": 1.0,
            })
        );
    }

    #[test]
    fn webhook_lag_is_in_milliseconds_under_its_status() {
        let line = emf_line(
            "WebhookLag",
            Unit::Milliseconds,
            1500.0,
            &[("Status", "delivered")],
            1,
        );
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0],
            json!({"Name": "WebhookLag", "Unit": "Milliseconds"})
        );
        assert_eq!(v["Status"], "delivered");
        assert_eq!(v["WebhookLag"], 1500.0);
    }

    #[test]
    fn emitted_lines_wait_in_the_buffer_and_leave_whole_in_order() {
        let lines = Lines(Mutex::new(String::new()));
        assert!(!lines.push("MessagesSent", Unit::Count, 1.0, &[("Outcome", "sent")], 1));
        assert!(!lines.push(
            "WebhookLag",
            Unit::Milliseconds,
            20.0,
            &[("Status", "read")],
            2
        ));
        let out = lines.take();
        let parsed: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        assert!(out.ends_with('\n'));
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0]["MessagesSent"], 1.0);
        assert_eq!(parsed[1]["WebhookLag"], 20.0);
        assert_eq!(parsed[1]["_aws"]["Timestamp"], 2);
        assert!(lines.take().is_empty(), "taken once");
    }

    #[test]
    fn a_full_buffer_asks_for_a_flush() {
        let lines = Lines(Mutex::new(String::new()));
        let mut full = false;
        for _ in 0..(FLUSH_AT / 100 + 1) {
            full = lines.push(
                "WebhookLag",
                Unit::Milliseconds,
                1.0,
                &[("Status", "sent")],
                1,
            );
        }
        assert!(full);
    }

    #[test]
    fn names_and_dimensions_are_escaped_as_json_strings() {
        let line = emf_line("Odd\"Name", Unit::Count, 2.5, &[("Dim", "a\\b\n\"c")], 3);
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["Dim"], "a\\b\n\"c");
        assert_eq!(v["Odd\"Name"], 2.5);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Dim"]])
        );
        let nan = emf_line("X", Unit::Count, f64::NAN, &[], 3);
        assert_eq!(
            serde_json::from_str::<Value>(&nan).expect("json")["X"],
            Value::Null
        );
    }
}
