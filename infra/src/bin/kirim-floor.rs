//! `kirim-floor`: the floor for `scripts/bench-webhook` (issue #13): the least a Meta
//! webhook receiver in Rust must do, and nothing else. axum on one address, `POST
//! /webhooks/meta`: check `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the app
//! secret, constant time), parse the notification's statuses, and record each one forward
//! only in a map in memory. No storage, no logging, no tenants.
//!
//! `KIRIM_META_APP_SECRET=... kirim-floor 127.0.0.1:PORT`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde::Deserialize;

#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    entry: Vec<Entry>,
}
#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}
#[derive(Deserialize)]
struct Change {
    value: Value,
}
#[derive(Deserialize)]
struct Value {
    #[serde(default)]
    statuses: Vec<Status>,
}
#[derive(Deserialize)]
struct Status {
    id: String,
    status: String,
}

fn rank(s: &str) -> u8 {
    match s {
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "failed" => 4,
        _ => 0,
    }
}

#[derive(Clone)]
struct Floor {
    secret: Arc<Vec<u8>>,
    statuses: Arc<Mutex<HashMap<String, u8>>>,
}

async fn webhook(State(f): State<Floor>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
    else {
        return StatusCode::UNAUTHORIZED;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&f.secret) else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    mac.update(&body);
    if mac.verify_slice(&sig).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(n) = serde_json::from_slice::<Notification>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut map = f.statuses.lock().unwrap_or_else(|e| e.into_inner());
    for s in n
        .entry
        .iter()
        .flat_map(|e| &e.changes)
        .flat_map(|c| &c.value.statuses)
    {
        let r = rank(&s.status);
        let e = map.entry(s.id.clone()).or_default();
        if r > *e {
            *e = r;
        }
    }
    StatusCode::OK
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3900".into());
    let secret = std::env::var("KIRIM_META_APP_SECRET").unwrap_or_default();
    let floor = Floor {
        secret: Arc::new(secret.into_bytes()),
        statuses: Arc::new(Mutex::new(HashMap::new())),
    };
    let app = Router::new()
        .route("/webhooks/meta", post(webhook))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
