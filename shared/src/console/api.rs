//! The console's way to the services: the API's own router, called in process. Every
//! console action is an API request with the signed-in user's session token, so it
//! passes the one access table (`http::access::ROUTES`), the same validation, the same
//! services and the same audit trail as a request from any other client.

use std::net::IpAddr;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use crate::http::extract::ClientIp;

/// Answers are read up to this size (the console calls no bulk route).
const MAX_ANSWER: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct Api {
    router: Router,
}

/// Who calls: the session token (none for sign-in) and the browser's address. Its
/// `Debug` shows the address only.
#[derive(Clone)]
pub struct Who {
    pub token: Option<String>,
    pub ip: Option<IpAddr>,
}

impl std::fmt::Debug for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Who")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ip", &self.ip)
            .finish()
    }
}

/// An API answer: its status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// The answer's `Retry-After` (seconds), if it had one (a `429`).
    pub retry_after: Option<u64>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The API's message for a person; never internals (the API hides them too).
    pub fn message(&self) -> String {
        if self.status.is_server_error() {
            // Not "nothing was changed": a write's answer may have been lost after it landed
            // (its form, sent again with the same key, is done at most once).
            return "Something went wrong on our side. Try again later.".into();
        }
        let said = self.body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "The request was refused.".into());
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // The API's words name its header, which a person does not see: the number.
            let why = said
                .split("; retry after")
                .next()
                .and_then(|w| w.split("; try again").next())
                .unwrap_or(&said);
            let wait = self.retry_after.unwrap_or(1);
            return format!(
                "{why}; try again in {wait} second{}",
                if wait == 1 { "" } else { "s" }
            );
        }
        said
    }
}

/// Percent-encodes one path segment (a phone's `+` becomes `%2B`).
pub fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Api {
    pub fn new(router: Router) -> Self {
        Self { router }
    }

    pub async fn get(&self, who: &Who, uri: &str) -> Answer {
        self.call(who, Method::GET, uri, None, None).await
    }

    /// Every record of a paged list (`path` answering `{field: [...], "next_cursor"}`),
    /// following `next_cursor` for at most `pages` pages: for a page that must find any
    /// record of the list (a user made a moment ago is on the last page, oldest first), not
    /// only the first page's. A page that fails ends the walk with what was read.
    pub async fn get_every(&self, who: &Who, path: &str, field: &str, pages: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..pages {
            let uri = match &cursor {
                Some(c) => format!("{path}?cursor={}", segment(c)),
                None => path.to_owned(),
            };
            let mut a = self.get(who, &uri).await;
            if let Value::Array(items) = a.body[field].take() {
                all.extend(items);
            }
            match a.body["next_cursor"].as_str() {
                Some(c) if a.status.is_success() => cursor = Some(c.to_owned()),
                _ => break,
            }
        }
        all
    }

    /// One API request. `uri` is a path (and query) of the API.
    pub async fn call(
        &self,
        who: &Who,
        method: Method,
        uri: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Answer {
        let body = body.map(|v| ("application/json", v.to_string().into_bytes()));
        let raw = self.raw(who, method, uri, body, idempotency_key).await;
        let body = if raw.bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw.bytes).unwrap_or(Value::Null)
        };
        Answer {
            status: raw.status,
            body,
            retry_after: raw.retry_after,
        }
    }

    /// One API request with any body, answered as bytes (a CSV export).
    pub async fn raw(
        &self,
        who: &Who,
        method: Method,
        uri: &str,
        body: Option<(&str, Vec<u8>)>,
        idempotency_key: Option<&str>,
    ) -> Raw {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = &who.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(k) = idempotency_key.and_then(|k| HeaderValue::from_str(k).ok()) {
            b = b.header("idempotency-key", k);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                b = b.header(header::CONTENT_TYPE, content_type);
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let Ok(mut req) = b.body(body) else {
            return internal("console built an invalid API request");
        };
        req.extensions_mut().insert(ClientIp(who.ip));
        let res = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = res.status();
        let content_type = res.headers().get(header::CONTENT_TYPE).cloned();
        let retry_after = res
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match axum::body::to_bytes(res.into_body(), MAX_ANSWER).await {
            Ok(bytes) => Raw {
                status,
                content_type,
                bytes: bytes.to_vec(),
                retry_after,
            },
            Err(_) => internal("API answer unreadable"),
        }
    }
}

/// An API answer as bytes.
#[derive(Debug)]
pub struct Raw {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub bytes: Vec<u8>,
    pub retry_after: Option<u64>,
}

fn internal(why: &str) -> Raw {
    tracing::error!(reason = why, "console API call failed");
    Raw {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        content_type: None,
        bytes: Vec::new(),
        retry_after: None,
    }
}
