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

use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "Kirim";

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

/// One EMF line for one metric value with its dimensions, stamped `at_ms` (epoch ms).
pub fn emf_line(name: &str, unit: Unit, value: f64, dims: &[(&str, &str)], at_ms: i64) -> String {
    let names: Vec<&str> = dims.iter().map(|(k, _)| *k).collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": at_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [names],
                "Metrics": [{"Name": name, "Unit": unit.as_str()}],
            }],
        }),
    );
    for (k, v) in dims {
        doc.insert((*k).into(), Value::String((*v).into()));
    }
    doc.insert(name.into(), json!(value));
    Value::Object(doc).to_string()
}

/// Writes one metric value as an EMF line on stdout.
pub fn emit(name: &str, unit: Unit, value: f64, dims: &[(&str, &str)]) {
    let line = emf_line(
        name,
        unit,
        value,
        dims,
        chrono::Utc::now().timestamp_millis(),
    );
    println!("{line}");
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
}
