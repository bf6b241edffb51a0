//! An optional `Idempotency-Key` (`POST /v1/messages`, a platform top-up): the extractor
//! that reads the key and fingerprints the body, and the one shape of the send's 202
//! answer (a replay answers the first response again, marked `Idempotent-Replayed: true`
//! as Stripe does).

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::error::ApiError;
use super::extract::parse_json;
use crate::domain::IdempotencyKey;
use crate::service::idempotency::Idempotent;
use crate::service::send::{Accepted, SendRequest};

pub const HEADER: &str = "idempotency-key";

/// A parsed JSON body and, when the header is present, its key and fingerprint.
pub struct Keyed<T> {
    pub req: T,
    pub idem: Option<Idempotent>,
}

/// `POST /v1/messages`'s body.
pub type SendBody = Keyed<SendRequest>;

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Keyed<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let key = key_of(req.headers())?;
        let bytes = super::extract::body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("a JSON body is required"));
        }
        let req: T = parse_json(&bytes)?;
        let idem = match key {
            None => None,
            Some(key) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|_| ApiError::invalid("malformed JSON"))?;
                Some(Idempotent {
                    fingerprint: key.fingerprint(&value),
                    key,
                })
            }
        };
        Ok(Keyed { req, idem })
    }
}

/// The request's `Idempotency-Key`, if it sent one: 1 to 255 printable ASCII characters,
/// else `400 invalid_request`.
pub fn key_of(headers: &axum::http::HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    // One key a request: sent twice, local mode would read the first and API Gateway hands
    // the function both joined with a comma (one key, another on each retry that adds its
    // own) — refused the same everywhere instead.
    // A comma is refused in a key for the same reason: on AWS a repeated header arrives as
    // one value, its copies joined by commas.
    let repeated = headers.get_all(HEADER).iter().nth(1).is_some()
        || headers
            .get(HEADER)
            .is_some_and(|v| v.as_bytes().contains(&b','));
    if repeated {
        return Err(ApiError::invalid(
            "send one Idempotency-Key header, with no comma in it",
        ));
    }
    match headers.get(HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|k| IdempotencyKey::parse(k).ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid("Idempotency-Key must be 1 to 255 printable ASCII characters")
            }),
    }
}

/// The key with the fingerprint of what the request asks (`what`: a route's own
/// canonical view of its request, so that one key on two routes never matches).
pub fn keyed(key: Option<IdempotencyKey>, what: &serde_json::Value) -> Option<Idempotent> {
    key.map(|key| Idempotent {
        fingerprint: key.fingerprint(what),
        key,
    })
}

/// Marks a replay's answer as Stripe does.
pub fn mark_replayed(res: &mut Response) {
    res.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
}

/// `202 {"id","status":"accepted"}`, for a new message and for a replay alike.
pub fn accepted_response(accepted: Accepted) -> Response {
    let (id, status, replayed) = match accepted {
        Accepted::New(record) => (record.id, record.status.as_str(), false),
        Accepted::Replayed(id, status) => (id, status, true),
    };
    let mut res = (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": status})),
    )
        .into_response();
    if replayed {
        mark_replayed(&mut res);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::key_of;
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn one_idempotency_key_is_read_and_a_repeated_header_is_refused() {
        let mut h = HeaderMap::new();
        assert!(key_of(&h).unwrap().is_none());
        h.insert("idempotency-key", HeaderValue::from_static("order-1"));
        assert!(key_of(&h).unwrap().is_some());
        h.append("idempotency-key", HeaderValue::from_static("retry-2"));
        assert!(key_of(&h).is_err());
        // As API Gateway hands a repeated header to the function: one value, joined.
        let mut joined = HeaderMap::new();
        joined.insert(
            "idempotency-key",
            HeaderValue::from_static("order-1,retry-2"),
        );
        assert!(key_of(&joined).is_err());
    }
}
