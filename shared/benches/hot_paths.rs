//! Micro-benchmarks of the hot pure functions on the request paths: the webhook's
//! signature check and body parse, the send body's parse, a broadcast's CSV upload.
//! `cargo bench -p kirim --bench hot_paths`; numbers in BENCHMARKS.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, Mac};
use kirim::domain::meta::{parse_notification, parse_tree};
use kirim::domain::signature::{parse_signature_header, signed_by};
use kirim::service::broadcasts::recipients_from_csv;
use kirim::service::send::{parse, SendRequest};
use sha2::Sha256;

/// A Meta status notification like the sandbox sends (three statuses, pricing included).
fn status_body() -> Vec<u8> {
    let status = |i: u32, st: &str| {
        serde_json::json!({"id": format!("wamid.HBgLNjAxMjM0NTY3ODkVAgARGBI{i:08}"), "status": st,
            "timestamp": "1700000000", "recipient_id": "60123456789",
            "biz_opaque_callback_data": "01JDQ7ZK7V8Y3N2W6C5X4B3A21",
            "conversation": {"id": "c1", "origin": {"type": "utility"}},
            "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"}})
    };
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "60300000000", "phone_number_id": "106540352242922"},
            "statuses": [status(1, "sent"), status(2, "delivered"), status(3, "read")]}}]}]})
    .to_string()
    .into_bytes()
}

fn webhook(c: &mut Criterion) {
    let body = status_body();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").unwrap();
    mac.update(&body);
    let header = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("signature_check", |b| {
        b.iter(|| {
            let sig = parse_signature_header(Some(black_box(&header))).unwrap_or_default();
            signed_by(b"app-secret", black_box(&body), &sig)
        })
    });
    g.bench_function("parse_notification", |b| {
        b.iter(|| parse_notification(black_box(&body)).map(|e| e.len()))
    });
    // The tree reader alone: what every body cost before the one-pass reader.
    g.bench_function("parse_tree", |b| {
        b.iter(|| parse_tree(black_box(&body)).map(|e| e.len()))
    });
    g.finish();
}

fn send_body(c: &mut Criterion) {
    let body = serde_json::json!({"to": "+60123456789", "template": {"name": "order_update",
        "language": "en_US", "category": "utility", "components": [{"type": "body",
        "parameters": [{"type": "text", "text": "ORDER-42"}]}]}, "client_reference": "order-42"})
    .to_string();
    c.bench_function("send/parse_body", |b| {
        b.iter(|| {
            let req: SendRequest = serde_json::from_str(black_box(&body)).ok()?;
            parse(req).ok().map(|(to, _, _)| to)
        })
    });
}

fn csv_upload(c: &mut Criterion) {
    let mut csv = String::from("name,phone\n");
    for i in 0..10_000u32 {
        csv.push_str(&format!("Customer {i},+6012{i:07}\n"));
    }
    let mut g = c.benchmark_group("broadcast");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("csv_10000_rows", |b| {
        b.iter(|| recipients_from_csv(black_box(csv.as_bytes())).map(|r| r.len()))
    });
    g.finish();
}

/// A webhook's request span on Lambda: made with its id, method and route, then its wamid,
/// tenant and message id recorded, as `service::webhook` does for one status; the JSON
/// formatter as `telemetry::init_json` sets it up, writing nowhere.
fn request_span_json(c: &mut Criterion) {
    use tracing::field::{display, Empty};
    let mut g = c.benchmark_group("request span, three ids recorded, JSON logs");
    for (name, append) in [("JsonFields", false), ("AppendJsonFields", true)] {
        use tracing_subscriber::layer::SubscriberExt;
        let layer = kirim::telemetry::json_layer().with_writer(std::io::sink);
        let dispatch = if append {
            tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(layer.fmt_fields(kirim::telemetry::AppendJsonFields)),
            )
        } else {
            tracing::Dispatch::new(tracing_subscriber::registry().with(layer))
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                tracing::dispatcher::with_default(&dispatch, || {
                    let span = tracing::info_span!(
                        "request",
                        request_id = "01KB0000000000000000000000",
                        method = "POST",
                        route = "/webhooks/meta",
                        tenant_id = Empty,
                        message_id = Empty,
                        wamid = Empty,
                    );
                    let _in = span.enter();
                    kirim::telemetry::record(
                        "wamid",
                        &display("wamid.HBgLNjAxMjM0NTY3ODkVAgARGBI00000001"),
                    );
                    kirim::telemetry::record("tenant_id", &display("01KB1111111111111111111111"));
                    kirim::telemetry::record("message_id", &display("01KB2222222222222222222222"));
                })
            })
        });
    }
    // As Lambda has it since stop 28: the request span made by `in_request`, its fields
    // waiting for a line (none is logged here, as in most requests).
    let dispatch = {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::Dispatch::new(
            tracing_subscriber::registry().with(kirim::telemetry::LazySpanFields::new(
                kirim::telemetry::json_layer()
                    .with_writer(std::io::sink)
                    .fmt_fields(kirim::telemetry::AppendJsonFields),
            )),
        )
    };
    g.bench_function("LazySpanFields (in_request)", |b| {
        b.iter(|| {
            tracing::dispatcher::with_default(&dispatch, || {
                futures::executor::block_on(kirim::telemetry::in_request(
                    "01KB0000000000000000000000".to_owned(),
                    axum::http::Method::POST,
                    Some("/webhooks/meta"),
                    async {
                        kirim::telemetry::record(
                            "wamid",
                            &display("wamid.HBgLNjAxMjM0NTY3ODkVAgARGBI00000001"),
                        );
                        kirim::telemetry::record(
                            "tenant_id",
                            &display("01KB1111111111111111111111"),
                        );
                        kirim::telemetry::record(
                            "message_id",
                            &display("01KB2222222222222222222222"),
                        );
                    },
                ))
            })
        })
    });
    g.finish();
}

criterion_group!(benches, webhook, send_body, csv_upload, request_span_json);
criterion_main!(benches);
