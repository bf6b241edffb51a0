//! CloudWatch metrics as Embedded Metric Format (EMF) lines: one JSON object per line
//! on stdout, which Lambda ships to CloudWatch Logs and CloudWatch turns into metrics in
//! the `Kirim` namespace. No tenant id or phone number is ever a dimension (cardinality,
//! and privacy): the logs carry those.
//!
//! | metric | unit | dimension |
//! |---|---|---|
//! | `MessagesSent` | Count | `Outcome` = `sent` |
//! | `MessagesFailed` | Count | `ErrorClass` (`permanent`, `tenant_stop`, `suppress`, `exhausted`, `outcome_unknown`, ...) |
//! | `DispatchRetries` | Count | `Reason` (`transient`, `delayed`, `storage`, `throttled`, `ambiguous`, `token_replaced`) |
//! | `Throttles` | Count | `Source` (`limiter_wait`, `limiter_full`, `meta_130429`) |
//! | `WebhookLag` | Milliseconds | `Status` (`sent`, `delivered`, `read`, `failed`) |
//! | `RateLimited` | Count | `Scope` (`request`, `heavy`, `webhook_bad_signatures`, `login`) |
//! | `TotpSeedsUnopened` | Count | `Where` = `login`, `confirm` |

//!
//! Values are gathered in a buffer in the process and reach stdout in one write per
//! [`flush`]: each Lambda invocation flushes when it ends (`http::lambda::for_lambda`,
//! [`flushed`] around the queue and schedule handlers), a long-running server every
//! [`FLUSH_EVERY`] ([`flush_every`]), and the buffer flushes itself past [`FLUSH_AT`]
//! values. One `write` syscall per status was 6% of the webhook's CPU (BENCHMARKS.md
//! "Webhook side by side"); a line is also written without building a JSON tree.
//!
//! The values of one metric with the same dimensions that meet in the buffer share one
//! line, as EMF's array of values (at most [`MAX_VALUES`] a line; CloudWatch counts each
//! element as a sample, so every statistic is as if each had its own line): a dispatcher
//! batch of ten sends writes one `MessagesSent` line, not ten (log bytes are CloudWatch
//! Logs money, issue #13).

use std::sync::Mutex;
use std::time::Duration;

pub const NAMESPACE: &str = "Kirim";

/// A long-running server's flush interval.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Buffered values past which an emit flushes at once.
pub const FLUSH_AT: usize = 1000;
/// The most values one EMF line may carry (EMF's limit for a metric's array).
pub const MAX_VALUES: usize = 100;

/// One metric's values under one set of dimensions, waiting for their line.
struct Pending {
    name: String,
    unit: Unit,
    dims: Vec<(String, String)>,
    values: Vec<f64>,
    /// The first value's time (epoch ms): the line's timestamp.
    at_ms: i64,
}

impl Pending {
    /// Whether a value of `name` under `dims` at `at_ms` goes on this line: same metric,
    /// same dimensions, the same minute (a line has one timestamp; CloudWatch's finest
    /// ordinary resolution is a minute), and room left.
    fn takes(&self, name: &str, unit: Unit, dims: &[(&str, &str)], at_ms: i64) -> bool {
        self.values.len() < MAX_VALUES
            && self.at_ms.div_euclid(60_000) == at_ms.div_euclid(60_000)
            && self.unit == unit
            && self.name == name
            && self.dims.len() == dims.len()
            && self
                .dims
                .iter()
                .zip(dims)
                .all(|((k, v), (k2, v2))| k == k2 && v == v2)
    }
}

#[derive(Default)]
struct Buffer {
    pending: Vec<Pending>,
    values: usize,
}

/// EMF values waiting for their write.
struct Lines(Mutex<Buffer>);

impl Lines {
    const fn new() -> Self {
        Lines(Mutex::new(Buffer {
            pending: Vec::new(),
            values: 0,
        }))
    }

    /// Adds one value (to the line of its metric and dimensions if one is waiting);
    /// answers whether the buffer is past [`FLUSH_AT`] values.
    fn push(&self, name: &str, unit: Unit, value: f64, dims: &[(&str, &str)], at_ms: i64) -> bool {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // From the newest: a metric's older lines are full or of an earlier time.
        match buf
            .pending
            .iter_mut()
            .rev()
            .find(|p| p.takes(name, unit, dims, at_ms))
        {
            Some(p) => p.values.push(value),
            None => buf.pending.push(Pending {
                name: name.to_owned(),
                unit,
                dims: dims
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                values: vec![value],
                at_ms,
            }),
        }
        buf.values += 1;
        buf.values >= FLUSH_AT
    }

    /// Takes what is buffered, as whole lines (each ending in a newline), in the order
    /// their metrics first came.
    fn take(&self) -> String {
        let pending = {
            let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
            buf.values = 0;
            std::mem::take(&mut buf.pending)
        };
        let mut out = String::with_capacity(pending.len() * 256);
        for p in &pending {
            let dims: Vec<(&str, &str)> = p
                .dims
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            push_emf_line(&mut out, &p.name, p.unit, &p.values, &dims, p.at_ms);
        }
        out
    }
}

static LINES: Lines = Lines::new();

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

/// `v` as a JSON number (`null` if it is not finite, as JSON has no NaN). A whole number
/// (every count, and a webhook's lag in milliseconds) is written as an integer (`20`, not
/// `20.0`: the same number to JSON and to CloudWatch), which is a fraction of the
/// shortest-float formatting's work (issue #13).
fn push_json_f64(out: &mut String, v: f64) {
    /// Below 2^53 every whole `f64` is exactly an `i64`.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.fract() == 0.0 && v.abs() < EXACT {
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else if v.is_finite() {
        let mut b = ryu::Buffer::new();
        out.push_str(b.format_finite(v));
    } else {
        out.push_str("null");
    }
}

/// Appends one EMF line (with its newline) for a metric's values under its dimensions
/// (one value as a number, more as an array), stamped `at_ms` (epoch ms).
fn push_emf_line(
    out: &mut String,
    name: &str,
    unit: Unit,
    values: &[f64],
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
    match values {
        [one] => push_json_f64(out, *one),
        many => {
            out.push('[');
            for (i, v) in many.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_f64(out, *v);
            }
            out.push(']');
        }
    }
    out.push_str("}\n");
}

/// One EMF line (without its newline) for one metric value with its dimensions,
/// stamped `at_ms` (epoch ms).
pub fn emf_line(name: &str, unit: Unit, value: f64, dims: &[(&str, &str)], at_ms: i64) -> String {
    let mut line = String::with_capacity(256);
    push_emf_line(&mut line, name, unit, &[value], dims, at_ms);
    line.pop();
    line
}

/// Buffers one metric value for its EMF line (stdout at the next [`flush`]).
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

/// Whether a buffered value's name or dimension contains `needle` (tests of who flushes).
#[cfg(test)]
pub(crate) fn buffered_contains(needle: &str) -> bool {
    LINES
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pending
        .iter()
        .any(|p| {
            p.name.contains(needle)
                || p.dims
                    .iter()
                    .any(|(k, v)| k.contains(needle) || v.contains(needle))
        })
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

/// A stored TOTP seed that did not open (tampered, another user's, or its data key refused
/// by KMS: a key policy without the role, a key deleted), at a sign-in (`login`) or a 2FA
/// confirmation (`confirm`). Not the caller's failure and not counted against them; one for
/// an operator to look at.
pub fn totp_seed_unopened(at: &'static str) {
    debug_assert!(TOTP_SEEDS_UNOPENED_WHERE.contains(&at), "{at}");
    count("TotpSeedsUnopened", ("Where", at));
}

/// Every `Where` of `TotpSeedsUnopened`: the template's alarm sums exactly these.
pub const TOTP_SEEDS_UNOPENED_WHERE: [&str; 2] = ["login", "confirm"];

/// An audit intent that did its work not (README "The audit trail", "Interrupted calls"):
/// `not_written` (its call went ahead without one), `unreadable` (a stale one that is no
/// intent), `unresolved` (its chain could not be decided: a tenant unreadable) or
/// `not_promoted` (its write as an interrupted event failed); the sweep goes on past each.
pub fn audit_intent_problem(problem: &'static str) {
    debug_assert!(AUDIT_INTENT_PROBLEMS.contains(&problem), "{problem}");
    count("AuditIntentProblems", ("Problem", problem));
}

/// Every `Problem` of `AuditIntentProblems`: the template's alarm sums exactly these
/// (CloudWatch alarms on metric math need each dimension value named).
pub const AUDIT_INTENT_PROBLEMS: [&str; 4] =
    ["not_written", "unreadable", "unresolved", "not_promoted"];

pub fn sent() {
    count("MessagesSent", ("Outcome", "sent"));
}

pub fn failed(error_class: &str) {
    count("MessagesFailed", ("ErrorClass", error_class));
}

/// `n` messages ended at once with `error_class` (a cancelled campaign's recipients never
/// queued).
pub fn failed_n(error_class: &str, n: usize) {
    emit(
        "MessagesFailed",
        Unit::Count,
        n as f64,
        &[("ErrorClass", error_class)],
    );
}

pub fn retry(reason: &str) {
    count("DispatchRetries", ("Reason", reason));
}

pub fn throttle(source: &str) {
    count("Throttles", ("Source", source));
}

/// A status callback given up after its last attempt (left to the dead-letter queue).
pub fn callback_given_up() {
    count("CallbacksGivenUp", ("Queue", "status_callback"));
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

/// A late `delivered` or `sent` (after the message moved past it) whose time was not
/// recorded: the message changed before each of its writes (`status::OVERTAKEN_TRIES`).
pub fn late_status_dropped(status: &str) {
    debug_assert!(LATE_STATUSES_DROPPED.contains(&status), "{status}");
    count("LateStatusesDropped", ("Status", status));
}

/// Every `Status` of `LateStatusesDropped` (the statuses `status::late_event` records a
/// time of): the template's alarm sums exactly these.
pub const LATE_STATUSES_DROPPED: [&str; 2] = ["delivered", "sent"];

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
                "MessagesFailed": 1,
            })
        );
    }

    #[test]
    fn whole_values_are_written_as_integers_and_others_as_the_shortest_float() {
        let written = |v: f64| {
            let mut out = String::new();
            push_json_f64(&mut out, v);
            out
        };
        assert_eq!(written(1.0), "1");
        assert_eq!(written(1500.0), "1500");
        assert_eq!(written(-3.0), "-3");
        assert_eq!(written(0.25), "0.25");
        assert_eq!(written(1e300), "1e300");
        assert_eq!(written(9_007_199_254_740_991.0), "9007199254740991");
        assert_eq!(written(f64::NAN), "null");
        assert_eq!(written(f64::INFINITY), "null");
        for v in [0.5, 7.0, 123_456.75, -2.5e-7, 4.0e20] {
            let read: f64 = serde_json::from_str(&written(v)).expect("a JSON number");
            assert_eq!(read, v, "{v} reads back as itself");
        }
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
        let lines = Lines::new();
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
        let lines = Lines::new();
        for i in 0..FLUSH_AT - 1 {
            assert!(!lines.push(
                "WebhookLag",
                Unit::Milliseconds,
                1.0,
                &[("Status", if i % 2 == 0 { "sent" } else { "read" })],
                1,
            ));
        }
        assert!(lines.push("MessagesSent", Unit::Count, 1.0, &[("Outcome", "sent")], 1));
        lines.take();
        assert!(
            !lines.push("MessagesSent", Unit::Count, 1.0, &[("Outcome", "sent")], 1),
            "taking empties the count"
        );
    }

    #[test]
    fn values_of_one_metric_and_dimensions_share_a_line_as_an_array() {
        let lines = Lines::new();
        for (v, status) in [(10.0, "sent"), (20.0, "read"), (30.0, "sent")] {
            lines.push(
                "WebhookLag",
                Unit::Milliseconds,
                v,
                &[("Status", status)],
                5,
            );
        }
        lines.push("MessagesSent", Unit::Count, 1.0, &[("Outcome", "sent")], 6);
        lines.push("MessagesSent", Unit::Count, 1.0, &[("Outcome", "sent")], 7);
        let parsed: Vec<Value> = lines
            .take()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        assert_eq!(parsed.len(), 3, "{parsed:?}");
        assert_eq!(parsed[0]["Status"], "sent");
        assert_eq!(parsed[0]["WebhookLag"], json!([10, 30]));
        assert_eq!(parsed[0]["_aws"]["Timestamp"], 5, "the first value's time");
        assert_eq!(parsed[1]["Status"], "read");
        assert_eq!(parsed[1]["WebhookLag"], 20.0, "one value stays a number");
        assert_eq!(parsed[2]["MessagesSent"], json!([1, 1]));
        assert_eq!(
            parsed[2]["_aws"]["CloudWatchMetrics"][0]["Metrics"][0],
            json!({"Name": "MessagesSent", "Unit": "Count"})
        );
    }

    #[test]
    fn values_a_minute_apart_go_on_lines_of_their_own() {
        let lines = Lines::new();
        lines.push(
            "MessagesSent",
            Unit::Count,
            1.0,
            &[("Outcome", "sent")],
            59_999,
        );
        lines.push(
            "MessagesSent",
            Unit::Count,
            1.0,
            &[("Outcome", "sent")],
            60_000,
        );
        lines.push(
            "MessagesSent",
            Unit::Count,
            1.0,
            &[("Outcome", "sent")],
            119_999,
        );
        let stamps: Vec<Value> = lines
            .take()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("json")["_aws"]["Timestamp"].clone())
            .collect();
        assert_eq!(stamps, vec![json!(59_999), json!(60_000)]);
    }

    #[test]
    fn a_line_carries_at_most_emf_s_hundred_values() {
        let lines = Lines::new();
        for _ in 0..(MAX_VALUES * 2 + 1) {
            lines.push(
                "Throttles",
                Unit::Count,
                1.0,
                &[("Source", "limiter_wait")],
                1,
            );
        }
        let sizes: Vec<usize> = lines
            .take()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("json");
                v["Throttles"].as_array().map_or(1, Vec::len)
            })
            .collect();
        assert_eq!(sizes, vec![MAX_VALUES, MAX_VALUES, 1]);
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
