//! The cost harness's counting proxy (`kirim-cost`, `scripts/bench-cost`): an HTTP proxy in
//! front of the AWS emulator that counts every AWS call by operation, with the DynamoDB
//! capacity units it would consume on on-demand DynamoDB.
//!
//! Why a proxy and not an SDK interceptor: the platform runs as its own process
//! (`kirim-local`), exactly as built, with no counting code compiled into it; the proxy sees
//! every SDK client's calls (DynamoDB, SQS, Secrets Manager) on the wire, and it can gate
//! the queue pollers so that the calls of the send request and of the dispatch that follows
//! are told apart.
//!
//! Capacity units are computed from item sizes, because moto answers
//! `ReturnConsumedCapacity=TOTAL` with a constant per operation (its `dynamodb/responses.py`:
//! the same value whatever the item's size). The rules (AWS DynamoDB developer guide,
//! "Read/write capacity mode" and "Item sizes"):
//! - a write: 1 WCU per started KB of the larger of the item before and after (a failed
//!   conditional write still costs it); in `TransactWriteItems` ×2 per item, a
//!   `ConditionCheck` included;
//! - a read: 1 RCU per started 4 KB when strongly consistent, 0.5 when eventually
//!   consistent, ×2 in `TransactGetItems`; a `GetItem` that finds nothing still costs the
//!   minimum, and so does each key a `BatchGetItem` read and found nothing under (its
//!   unprocessed keys cost nothing); a `Query` adds up the items it returns and rounds up
//!   once;
//! - each global secondary index the item is (or was) in costs its own write (a key change
//!   is a delete plus a put), counted here at ×1 inside a transaction too.
//!
//! The sizes before and after a write come from side `GetItem`s the proxy makes straight to
//! the emulator (not counted).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

/// The size DynamoDB bills for one attribute value (`{"S": "..."}`, `{"N": "..."}`, ...).
pub fn value_size(v: &Value) -> usize {
    let Some((ty, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match ty.as_str() {
        "S" => inner.as_str().map_or(0, str::len),
        // Numbers: about one byte per two significant digits, plus one.
        "N" => {
            let digits = inner.as_str().map_or(0, |s| {
                s.trim_start_matches(['-', '0', '.'])
                    .chars()
                    .filter(char::is_ascii_digit)
                    .count()
            });
            digits.div_ceil(2) + 1
        }
        // Binary arrives base64-encoded.
        "B" => inner.as_str().map_or(0, |s| s.len() / 4 * 3),
        "BOOL" | "NULL" => 1,
        "SS" | "NS" | "BS" => inner.as_array().map_or(0, |a| {
            a.iter()
                .map(|e| {
                    let one = json!({ &ty[..1]: e });
                    value_size(&one)
                })
                .sum()
        }),
        "L" => inner.as_array().map_or(3, |a| {
            3 + a.iter().map(|e| value_size(e) + 1).sum::<usize>()
        }),
        "M" => {
            3 + inner.as_object().map_or(0, |m| {
                m.iter().map(|(k, e)| k.len() + value_size(e) + 1).sum()
            })
        }
        _ => 0,
    }
}

/// The size DynamoDB bills for an item (`{"name": {"S": ...}, ...}`): names plus values.
pub fn item_size(item: &Value) -> usize {
    item.as_object()
        .map_or(0, |m| m.iter().map(|(k, v)| k.len() + value_size(v)).sum())
}

/// Write units of one item write: 1 per started KB of the larger image (at least 1).
pub fn write_units(before: usize, after: usize) -> f64 {
    before.max(after).div_ceil(1024).max(1) as f64
}

/// Read units of `bytes` read at once: per started 4 KB, halved when eventually consistent.
pub fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// What one (phase, service, operation) cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Units {
    pub calls: u64,
    pub wcu: f64,
    pub rcu: f64,
    /// Of `wcu`: the global secondary indexes' share.
    pub gsi_wcu: f64,
    /// Calls that found no other counted call in flight: each starts a round trip the
    /// caller waits for (calls made together, while another is unanswered, share it).
    /// On Lambda a request's billed time is about its round trips times the network's.
    pub round_trips: u64,
}

impl std::ops::AddAssign for Units {
    fn add_assign(&mut self, o: Units) {
        self.calls += o.calls;
        self.wcu += o.wcu;
        self.rcu += o.rcu;
        self.gsi_wcu += o.gsi_wcu;
        self.round_trips += o.round_trips;
    }
}

/// The counts, by phase then by `Service.Operation`.
pub type Tally = BTreeMap<String, BTreeMap<String, Units>>;

/// A table's key attributes and its global secondary indexes' keys (all projected `ALL`,
/// as the template declares them).
#[derive(Clone, Debug, Default)]
struct Schema {
    key: Vec<String>,
    gsis: Vec<Vec<String>>,
}

#[derive(Default)]
struct Shared {
    phase: Mutex<String>,
    tally: Mutex<Tally>,
    schemas: Mutex<HashMap<String, Schema>>,
    /// Calls in flight other than queue polls, and when the last one ended.
    busy: AtomicU64,
    last_call: Mutex<Option<Instant>>,
    /// Queue polls wait while this is false (set by [`CountingProxy::gate`]).
    gate: tokio::sync::watch::Sender<bool>,
    /// Added to every counted call before it is forwarded ([`CountingProxy::set_latency`]).
    latency: Mutex<Duration>,
}

/// A counted call in flight: `busy` while it lives; the end of the last one is remembered
/// for [`CountingProxy::settle`].
struct InFlight<'a> {
    shared: &'a Shared,
    /// It found no other call in flight.
    opened: bool,
}

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let opened = shared.busy.fetch_add(1, Ordering::SeqCst) == 0;
        InFlight { shared, opened }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *lock(&self.shared.last_call) = Some(Instant::now());
        self.shared.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The counting proxy: serve it, point `AWS_ENDPOINT_URL` at [`CountingProxy::url`].
#[derive(Clone)]
pub struct CountingProxy {
    shared: Arc<Shared>,
    upstream: String,
    http: reqwest::Client,
    pub url: String,
    /// Prints each DynamoDB call on stderr (`KIRIM_COST_TRACE=1`).
    trace: bool,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `upstream` (the emulator's URL).
    pub async fn start(upstream: &str) -> std::io::Result<CountingProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (gate, _) = tokio::sync::watch::channel(true);
        let proxy = CountingProxy {
            shared: Arc::new(Shared {
                phase: Mutex::new("setup".into()),
                gate,
                ..Shared::default()
            }),
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            url: format!("http://{addr}"),
            trace: std::env::var("KIRIM_COST_TRACE").is_ok_and(|v| v == "1"),
        };
        let router = Router::new().fallback(forward).with_state(proxy.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(proxy)
    }

    /// Counts what follows under `phase`.
    pub fn set_phase(&self, phase: &str) {
        *lock(&self.shared.phase) = phase.to_owned();
    }

    /// Opens (true) or closes (false) the gate queue polls wait at.
    pub fn gate(&self, open: bool) {
        self.shared.gate.send_replace(open);
    }

    /// Holds every counted call (not queue polls) this long before forwarding it: the
    /// network's round trip that the emulator on loopback does not have. Calls made
    /// together then overlap for certain, so [`Units::round_trips`] counts them as one.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.shared.latency) = latency;
    }

    /// Waits until no counted call has been in flight for `quiet` (bounded by `within`).
    pub async fn settle(&self, quiet: Duration, within: Duration) -> bool {
        let give_up = Instant::now() + within;
        loop {
            let idle = self.shared.busy.load(Ordering::SeqCst) == 0
                && lock(&self.shared.last_call).is_none_or(|t| t.elapsed() >= quiet);
            if idle {
                return true;
            }
            if Instant::now() > give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything counted so far (and starts afresh).
    pub fn take(&self) -> Tally {
        std::mem::take(&mut *lock(&self.shared.tally))
    }

    /// Adds a tally taken earlier back to the one being counted.
    pub fn restore(&self, earlier: Tally) {
        let mut tally = lock(&self.shared.tally);
        for (phase, ops) in earlier {
            let into = tally.entry(phase).or_default();
            for (op, units) in ops {
                *into.entry(op).or_default() += units;
            }
        }
    }

    fn count(&self, op: &str, units: Units) {
        let phase = lock(&self.shared.phase).clone();
        *lock(&self.shared.tally)
            .entry(phase)
            .or_default()
            .entry(op.to_owned())
            .or_default() += units;
    }

    /// A side call straight to the emulator (not counted).
    async fn dynamo(&self, auth: &HeaderMap, op: &str, body: Value) -> Option<Value> {
        let mut req = self
            .http
            .post(format!("{}/", self.upstream))
            .header("x-amz-target", format!("DynamoDB_20120810.{op}"))
            .header("content-type", "application/x-amz-json-1.0")
            .body(body.to_string());
        if let Some(a) = auth.get("authorization") {
            req = req.header("authorization", a.clone());
        }
        let res = req.send().await.ok()?;
        res.json().await.ok()
    }

    async fn schema(&self, auth: &HeaderMap, table: &str) -> Schema {
        if let Some(s) = lock(&self.shared.schemas).get(table) {
            return s.clone();
        }
        let described = self
            .dynamo(auth, "DescribeTable", json!({ "TableName": table }))
            .await
            .unwrap_or_default();
        let names = |ks: &Value| -> Vec<String> {
            ks.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k["AttributeName"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let t = &described["Table"];
        let schema = Schema {
            key: names(&t["KeySchema"]),
            gsis: t["GlobalSecondaryIndexes"]
                .as_array()
                .map(|a| a.iter().map(|g| names(&g["KeySchema"])).collect())
                .unwrap_or_default(),
        };
        lock(&self.shared.schemas).insert(table.to_owned(), schema.clone());
        schema
    }

    /// The stored item under `key`, read strongly consistently (not counted).
    async fn image(&self, auth: &HeaderMap, table: &str, key: &Value) -> Option<Value> {
        let got = self
            .dynamo(
                auth,
                "GetItem",
                json!({ "TableName": table, "Key": key, "ConsistentRead": true }),
            )
            .await?;
        got.get("Item").cloned()
    }

    /// One item's key, taken from the item.
    async fn key_of(&self, auth: &HeaderMap, table: &str, item: &Value) -> Value {
        let schema = self.schema(auth, table).await;
        let mut key = serde_json::Map::new();
        for k in schema.key {
            if let Some(v) = item.get(&k) {
                key.insert(k, v.clone());
            }
        }
        Value::Object(key)
    }
}

/// An item key for the trace: its values, digits past the fourth of a run masked (phone
/// numbers), long values (digests) cut short.
fn key_summary(key: &Value) -> String {
    let Some(m) = key.as_object() else {
        return String::new();
    };
    m.values()
        .filter_map(|v| v.as_object()?.values().next()?.as_str())
        .map(|s| {
            let mut run = 0;
            s.chars()
                .map(|c| {
                    run = if c.is_ascii_digit() { run + 1 } else { 0 };
                    if run > 4 {
                        '•'
                    } else {
                        c
                    }
                })
                .take(40)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One item write to account for: its table, key, and the new image when the request
/// carries it (a `Put`).
struct ItemWrite {
    table: String,
    key: Value,
    put: Option<Value>,
    /// A `ConditionCheck` (reads the item, writes nothing, billed as a write).
    check: bool,
}

async fn item_writes(p: &CountingProxy, auth: &HeaderMap, op: &str, req: &Value) -> Vec<ItemWrite> {
    let mut out = Vec::new();
    let one = |table: &Value, key: Option<Value>, put: Option<Value>, check: bool| {
        (
            table.as_str().unwrap_or_default().to_owned(),
            key,
            put,
            check,
        )
    };
    let mut raw = Vec::new();
    match op {
        "PutItem" => raw.push(one(
            &req["TableName"],
            None,
            Some(req["Item"].clone()),
            false,
        )),
        "UpdateItem" | "DeleteItem" => raw.push(one(
            &req["TableName"],
            Some(req["Key"].clone()),
            None,
            false,
        )),
        "TransactWriteItems" => {
            for t in req["TransactItems"].as_array().into_iter().flatten() {
                if let Some(x) = t.get("Put") {
                    raw.push(one(&x["TableName"], None, Some(x["Item"].clone()), false));
                }
                for kind in ["Update", "Delete", "ConditionCheck"] {
                    if let Some(x) = t.get(kind) {
                        raw.push(one(
                            &x["TableName"],
                            Some(x["Key"].clone()),
                            None,
                            kind == "ConditionCheck",
                        ));
                    }
                }
            }
        }
        "BatchWriteItem" => {
            for (table, reqs) in req["RequestItems"].as_object().into_iter().flatten() {
                for r in reqs.as_array().into_iter().flatten() {
                    let t = Value::String(table.clone());
                    if let Some(x) = r.get("PutRequest") {
                        raw.push(one(&t, None, Some(x["Item"].clone()), false));
                    }
                    if let Some(x) = r.get("DeleteRequest") {
                        raw.push(one(&t, Some(x["Key"].clone()), None, false));
                    }
                }
            }
        }
        _ => {}
    }
    for (table, key, put, check) in raw {
        let key = match (key, &put) {
            (Some(k), _) => k,
            (None, Some(item)) => p.key_of(auth, &table, item).await,
            (None, None) => Value::Null,
        };
        out.push(ItemWrite {
            table,
            key,
            put,
            check,
        });
    }
    out
}

/// Whether `item` is in a GSI with key attributes `keys`, and its key values there.
fn gsi_key(item: Option<&Value>, keys: &[String]) -> Option<Vec<Value>> {
    let item = item?;
    keys.iter().map(|k| item.get(k).cloned()).collect()
}

/// Write units of one item write from its before and after images.
fn write_cost(schema: &Schema, before: Option<&Value>, after: Option<&Value>, tx: bool) -> Units {
    let size = |v: Option<&Value>| v.map_or(0, item_size);
    let factor = if tx { 2.0 } else { 1.0 };
    let mut u = Units {
        wcu: factor * write_units(size(before), size(after)),
        ..Units::default()
    };
    if before != after {
        for g in &schema.gsis {
            let (old, new) = (gsi_key(before, g), gsi_key(after, g));
            let gsi = match (&old, &new) {
                (Some(o), Some(n)) if o == n => write_units(0, size(after)),
                (Some(_), Some(_)) => write_units(0, size(before)) + write_units(0, size(after)),
                (Some(_), None) => write_units(0, size(before)),
                (None, Some(_)) => write_units(0, size(after)),
                (None, None) => 0.0,
            };
            u.gsi_wcu += gsi;
            u.wcu += gsi;
        }
    }
    u
}

/// Read units from a read request and its response.
fn read_cost(op: &str, req: &Value, res: &Value) -> Units {
    let consistent = req["ConsistentRead"].as_bool().unwrap_or(false);
    let rcu = match op {
        "GetItem" => read_units(res.get("Item").map_or(0, item_size), consistent),
        "Query" | "Scan" => {
            let bytes = res["Items"]
                .as_array()
                .map_or(0, |a| a.iter().map(item_size).sum());
            read_units(bytes, consistent)
        }
        // Each key read as a `GetItem` (the developer guide: a batch's items are processed as
        // individual `GetItem` requests), so a key that finds nothing costs the minimum too;
        // keys answered unprocessed were not read.
        "BatchGetItem" => {
            let mut total = 0.0;
            for (table, asked) in req["RequestItems"].as_object().into_iter().flatten() {
                let c = asked["ConsistentRead"].as_bool().unwrap_or(false);
                let count = |v: &Value| v.as_array().map_or(0, Vec::len);
                let items = res["Responses"][table].as_array();
                for i in items.into_iter().flatten() {
                    total += read_units(item_size(i), c);
                }
                let read = count(&asked["Keys"])
                    .saturating_sub(count(&res["UnprocessedKeys"][table]["Keys"]));
                let missing = read.saturating_sub(items.map_or(0, Vec::len));
                total += missing as f64 * read_units(0, c);
            }
            total
        }
        "TransactGetItems" => res["Responses"].as_array().map_or(0.0, |a| {
            a.iter()
                .map(|r| 2.0 * read_units(r.get("Item").map_or(0, item_size), true))
                .sum()
        }),
        _ => 0.0,
    };
    Units {
        rcu,
        ..Units::default()
    }
}

/// The service and operation of an AWS request: the JSON protocols' `X-Amz-Target`
/// (`DynamoDB_20120810.GetItem`, `AmazonSQS.SendMessage`, `secretsmanager.GetSecretValue`),
/// else the query protocol's `Action`.
fn operation(headers: &HeaderMap, body: &[u8]) -> (String, String) {
    if let Some(t) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let (svc, op) = t.split_once('.').unwrap_or(("?", t));
        let svc = match svc {
            s if s.starts_with("DynamoDB") => "DynamoDB",
            "AmazonSQS" => "SQS",
            "secretsmanager" => "SecretsManager",
            s => s,
        };
        return (svc.to_owned(), op.to_owned());
    }
    let text = String::from_utf8_lossy(body);
    let action = text
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("other");
    ("other".into(), action.to_owned())
}

async fn forward(
    State(p): State<CountingProxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (svc, op) = operation(&headers, &body);
    let poll = svc == "SQS" && op == "ReceiveMessage";
    let mut body = body;
    if poll {
        // Queue polls wait at the gate, then never wait at the emulator (a long poll sent
        // before the gate closes would otherwise pick up the next message mid-phase).
        let mut open = p.shared.gate.subscribe();
        let _ = open.wait_for(|o| *o).await;
        if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
            v["WaitTimeSeconds"] = json!(0);
            body = Bytes::from(v.to_string());
        }
    }
    // A call that finds none other in flight starts a round trip of its own. The guard
    // counts it out however this handler ends (a client that hangs up drops it midway).
    let in_flight = (!poll).then(|| InFlight::enter(&p.shared));
    let opened = in_flight.as_ref().is_some_and(|f| f.opened);
    if !poll {
        let latency = *lock(&p.shared.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
    let req_json: Value = serde_json::from_slice(&body).unwrap_or_default();
    let dynamo_write = svc == "DynamoDB"
        && matches!(
            op.as_str(),
            "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems" | "BatchWriteItem"
        );
    let writes = if dynamo_write {
        let mut w = Vec::new();
        for item in item_writes(&p, &headers, &op, &req_json).await {
            let before = p.image(&headers, &item.table, &item.key).await;
            w.push((item, before));
        }
        w
    } else {
        Vec::new()
    };

    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut req = p.http.request(method, format!("{}{path}", p.upstream));
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let answer = req.body(body).send().await;
    let (status, res_headers, res_body) = match answer {
        Ok(r) => {
            let status = r.status();
            let h = r.headers().clone();
            let b = r.bytes().await.unwrap_or_default();
            (status, h, b)
        }
        Err(_) => (StatusCode::BAD_GATEWAY, HeaderMap::new(), Bytes::new()),
    };
    let res_json: Value = serde_json::from_slice(&res_body).unwrap_or_default();

    let mut units = Units {
        calls: 1,
        round_trips: u64::from(opened),
        ..Units::default()
    };
    if dynamo_write {
        let tx = op == "TransactWriteItems";
        for (item, before) in &writes {
            let schema = p.schema(&headers, &item.table).await;
            if item.check {
                units.wcu += 2.0 * write_units(before.as_ref().map_or(0, item_size), 0);
                continue;
            }
            let after = match &item.put {
                Some(put) if status.is_success() => Some(put.clone()),
                _ => p.image(&headers, &item.table, &item.key).await,
            };
            units += write_cost(&schema, before.as_ref(), after.as_ref(), tx);
        }
    } else if svc == "DynamoDB" {
        units += read_cost(&op, &req_json, &res_json);
    }
    let label = format!("{svc}.{op}");
    if p.trace && svc == "DynamoDB" {
        let keys: Vec<String> = if dynamo_write {
            writes.iter().map(|(w, _)| key_summary(&w.key)).collect()
        } else if op == "Query" {
            vec![key_summary(&req_json["ExpressionAttributeValues"])]
        } else {
            vec![key_summary(&req_json["Key"])]
        };
        eprintln!(
            "trace | {} | {label} | {} | WCU {} | RCU {} | {}",
            lock(&p.shared.phase),
            keys.join(" + "),
            units.wcu,
            units.rcu,
            req_json["IndexName"].as_str().unwrap_or("")
        );
    }
    if poll {
        let got = res_json["Messages"]
            .as_array()
            .is_some_and(|m| !m.is_empty());
        if got {
            p.count(&label, units);
        } else {
            // An empty poll: counted apart (on Lambda the event source mapping polls).
            p.count(&format!("{label} (empty)"), units);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        p.count(&label, units);
    }
    drop(in_flight);

    let mut out = Response::builder().status(status);
    for (k, v) in &res_headers {
        if k != "transfer-encoding" && k != "content-length" && k != "connection" {
            out = out.header(k, v);
        }
    }
    out.body(Body::from(res_body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_items_size_is_its_names_plus_its_values() {
        let item = json!({
            "pk": {"S": "T#01"},           // 2 + 4
            "n": {"N": "12345"},           // 1 + 4 (3 + 1)
            "ok": {"BOOL": true},          // 2 + 1
            "m": {"M": {"a": {"S": "xy"}}} // 1 + 3 + (1 + 2 + 1)
        });
        assert_eq!(item_size(&item), 6 + 5 + 3 + 8);
    }

    #[test]
    fn a_write_costs_one_unit_per_started_kilobyte_of_the_larger_image() {
        assert_eq!(write_units(0, 10), 1.0);
        assert_eq!(write_units(1024, 10), 1.0);
        assert_eq!(write_units(1025, 10), 2.0);
        assert_eq!(write_units(10, 2049), 3.0);
    }

    #[test]
    fn a_read_costs_one_unit_per_started_four_kilobytes_and_half_when_eventual() {
        assert_eq!(read_units(0, true), 1.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(100, false), 0.5);
    }

    #[test]
    fn a_batch_get_costs_each_key_it_read_as_a_get_item_found_or_not() {
        let item = json!({"pk": {"S": "TENANT#t"}, "sk": {"S": "OPTOUT#+60123456789"}});
        let key = json!({"pk": {"S": "TENANT#t"}, "sk": {"S": "PAIR#+60123456789"}});
        let req =
            json!({"RequestItems": {"T": {"Keys": [key, key, key, key], "ConsistentRead": true}}});
        let res = json!({"Responses": {"T": [item]},
                         "UnprocessedKeys": {"T": {"Keys": [key]}}});
        // One found, two found nothing, one not read.
        assert_eq!(read_cost("BatchGetItem", &req, &res).rcu, 3.0);
        let mut eventual = req.clone();
        eventual["RequestItems"]["T"]["ConsistentRead"] = json!(false);
        assert_eq!(read_cost("BatchGetItem", &eventual, &res).rcu, 1.5);
    }

    #[test]
    fn a_transactional_write_costs_double_and_an_index_entry_its_own_write() {
        let schema = Schema {
            key: vec!["pk".into(), "sk".into()],
            gsis: vec![vec!["gsi1pk".into(), "gsi1sk".into()]],
        };
        let before = json!({"pk": {"S": "a"}, "sk": {"S": "b"}});
        let after = json!({"pk": {"S": "a"}, "sk": {"S": "b"},
                           "gsi1pk": {"S": "x"}, "gsi1sk": {"S": "y"}});
        let u = write_cost(&schema, Some(&before), Some(&after), true);
        assert_eq!((u.wcu, u.gsi_wcu), (3.0, 1.0));
        let same = write_cost(&schema, Some(&before), Some(&before), false);
        assert_eq!((same.wcu, same.gsi_wcu), (1.0, 0.0));
    }

    #[test]
    fn the_operation_comes_from_the_target_header() {
        let mut h = HeaderMap::new();
        h.insert("x-amz-target", "DynamoDB_20120810.GetItem".parse().unwrap());
        assert_eq!(operation(&h, b""), ("DynamoDB".into(), "GetItem".into()));
        h.insert("x-amz-target", "AmazonSQS.SendMessage".parse().unwrap());
        assert_eq!(operation(&h, b""), ("SQS".into(), "SendMessage".into()));
    }
}
