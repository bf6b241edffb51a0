//! Extractors that turn raw requests into parsed inputs, with the contract's errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::service::auth::{authenticate, Caller};

/// Path parameters, as axum's `Path`, with the contract's error for one that cannot be
/// read (percent-encoding that decodes to invalid UTF-8, `%FF`): every id Kirim mints or
/// Meta gives is UTF-8, so such an id is one it never issued (`404`); an opt-out key is
/// neither a phone nor a user id (`400 invalid_phone_number`). axum's own answer was a bare
/// `400 invalid_request` the document does not list.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(_) if parts.uri.path().starts_with("/v1/opt-outs/") => {
                Err(crate::service::errors::ServiceError::InvalidPhoneNumber.into())
            }
            Err(_) => Err(ApiError::not_found()),
        }
    }
}

/// The query string, as axum's `Query`, refusing a parameter given more than once
/// (`?limit=1000&limit=10`): serde keeps the last silently, so a request read one way by
/// its sender was answered another (a refused page size taken, one status filter of two
/// applied). `400 invalid_request` naming the parameter, as an unknown one is.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or("");
        let mut seen = std::collections::HashSet::new();
        for (k, _) in url::form_urlencoded::parse(raw.as_bytes()) {
            if !seen.insert(k.clone()) {
                return Err(ApiError::invalid(format!(
                    "query parameter `{k}` given more than once"
                )));
            }
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(_) => Err(ApiError::invalid("the query string cannot be read")),
        }
    }
}

/// The largest request body accepted (API.md): larger is `413 payload_too_large`.
pub const MAX_BODY: usize = 256 * 1024;

/// JSON body: too large → 413, malformed / wrong types / unknown fields → 400 with the
/// path of the problem, never the offending value (it may be message content).
pub struct JsonBody<T>(pub T);

fn describe(e: &serde_path_to_error::Error<serde_json::Error>, well_formed: bool) -> String {
    let path = e.path().to_string();
    let inner = e.inner();
    let what = match inner.classify() {
        // serde_json reports a wrong type for an enum (`"category": null`, `5`) as a syntax
        // error; in well-formed JSON it is a wrong value at its path.
        serde_json::error::Category::Syntax if well_formed => {
            "wrong type or invalid value".to_owned()
        }
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            return format!(
                "malformed JSON at line {} column {}",
                inner.line(),
                inner.column()
            )
        }
        _ => {
            let text = inner.to_string();
            if text.starts_with("unknown field")
                || text.starts_with("missing field")
                || text.starts_with("duplicate field")
            {
                text.split(" at line")
                    .next()
                    .unwrap_or("invalid field")
                    .to_owned()
            } else if text.starts_with("unknown variant") {
                text.split(", expected")
                    .nth(1)
                    .map(|exp| {
                        format!(
                            "unknown value, expected {}",
                            exp.split(" at line").next().unwrap_or("").trim_start()
                        )
                    })
                    .unwrap_or_else(|| "unknown value".into())
            } else {
                "wrong type or invalid value".to_owned()
            }
        }
    };
    if path == "." || path.is_empty() {
        super::error::echoed(&what, ECHOED_WHAT)
    } else {
        format!(
            "{} (at `{}`)",
            super::error::echoed(&what, ECHOED_WHAT),
            super::error::echoed(&path, ECHOED_PATH)
        )
    }
}

/// At most this many characters of a problem's wording are answered: an unknown field's
/// name is the client's, and a 180 KB name must not come back twice in a `400`. Long
/// enough for serde's "expected one of" list of the largest body.
const ECHOED_WHAT: usize = 600;
/// At most this many characters of the problem's path.
const ECHOED_PATH: usize = 120;

/// One JSON value, and nothing after it but whitespace: `{…}garbage` or `{…}{…}` is
/// malformed, as `serde_json::from_slice` (which a keyed send's fingerprint reads) has it.
///
/// Every body is an object: serde reads a struct from a JSON array too, its elements as the
/// fields in order, so `["T","1000001",…]` would pass with no field name checked
/// (`deny_unknown_fields` never sees one). A body whose value is not an object is refused.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        // Malformed or empty: said as serde says it, below.
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
            if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() =>
        {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        _ => {}
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        ApiError::invalid(describe(&e, well_formed))
    })?;
    de.end().map_err(|e| {
        ApiError::invalid(format!(
            "malformed JSON: more after the body's value at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    Ok(value)
}

/// A request's body as bytes, refused `415` if compressed ([`encoded`]), `413` past the
/// route's limit, `400` if it cannot be read: every JSON body of the API is read here.
pub(crate) async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if let Some(refused) = encoded(req.headers()) {
        return Err(refused);
    }
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::invalid("could not read the request body")
        }
    })
}

/// The content codings that compress (IANA's registry, and the `x-` names clients still
/// send): a body in one of them is not the JSON it carries.
const COMPRESSIONS: [&str; 7] = [
    "gzip",
    "x-gzip",
    "deflate",
    "br",
    "compress",
    "x-compress",
    "zstd",
];

/// A body sent compressed (`Content-Encoding: gzip`, `br`, `deflate`, `zstd`, ...) is
/// refused `415 invalid_request` before it is read: its bytes are not JSON, and "malformed
/// JSON at line 1 column 1" would send its sender looking in the wrong place. Kirim takes
/// bodies uncompressed (at most 256 KiB), as Stripe's and Twilio's APIs do. Any other
/// value (`identity`, or a client's `UTF-8` meant as a charset) is read as before, the body
/// being whatever it is; the header's value is not echoed. The refusal carries
/// `Accept-Encoding: identity`, the codings taken (RFC 9110 §15.5.16: a `415` for a
/// content coding ought to name them), so a client that adapts knows to send it plain.
fn encoded(headers: &axum::http::HeaderMap) -> Option<ApiError> {
    let compressed = headers
        .get_all(axum::http::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| {
            COMPRESSIONS
                .iter()
                .any(|z| c.trim().eq_ignore_ascii_case(z))
        });
    compressed.then(|| ApiError {
        accept_identity: true,
        ..ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "compressed request bodies are not accepted (Content-Encoding): send the body (JSON, or a campaign's CSV) uncompressed",
        )
    })
}

/// `413 payload_too_large` for the API's routes.
pub(crate) fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "request bodies are limited to 256 KiB",
    )
}

/// Whether `body`'s declared length (hyper's size hint from `Content-Length`) is past
/// `limit`: such a request is refused before a byte of it is read (`error::RequestIds` for
/// the API, [`body_at_most`] for Meta's webhook), since a client that declares a gigabyte
/// and trickles it would hold the request open until the limit's worth had come (local
/// mode; API Gateway reads bodies whole). A body of unknown length (chunked) declares
/// nothing and is counted as it comes.
pub(crate) fn declared_over(body: &axum::body::Body, limit: usize) -> bool {
    http_body::Body::size_hint(body).lower() > limit as u64
}

/// A body read whole as bytes, for a route that reads it its own way (a CSV upload, a body
/// that may be left out): refused as every body is ([`body_bytes`]: compressed `415`,
/// past the limit `413`).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        body_bytes(req, state).await.map(RawBody)
    }
}

/// A JSON body that may be left out entirely (then `T::default()`); if present it is
/// parsed as strictly as [`JsonBody`].
pub struct OptionalJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("a JSON body is required"));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// The body of a route that takes none: nothing, whitespace or an empty JSON object (`{}`,
/// which many clients send with every `POST`). Anything else is `400 invalid_request`, as
/// an unknown field is anywhere (a `{"waba_id": …}` to a sync of every WABA would be
/// answered for all of them, silently); past [`MAX_BODY`], `413`.
pub struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(NoBody);
        }
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) {
            Ok(m) if m.is_empty() => Ok(NoBody),
            _ => Err(ApiError::invalid(
                "this route takes no body (nothing, or {})",
            )),
        }
    }
}

pub fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

/// [`bearer`] from the headers alone (a handler that has them, not the parts).
/// The scheme is matched without regard to case (RFC 9110 §11.1: `bearer` is `Bearer`).
/// A request with two `Authorization` headers names no credential (`401`): which one
/// would count is the host's choice (API Gateway joins them with a comma, which no token
/// matches; local mode's hyper would give the first).
pub fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let v = all.next().and_then(|v| v.to_str().ok())?;
    if all.next().is_some() {
        return None;
    }
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Set by the access middleware for every authenticated route.
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        Ok(authenticate(&state.deps, bearer(parts)).await?)
    }
}

/// Reads a body of at most `limit` bytes, as axum's `Bytes` extractor would under a
/// `DefaultBodyLimit` of `limit`: `413` past it, `400` if it cannot be read.
pub async fn body_at_most(body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("this route's bodies are limited to {} KiB", limit / 1024),
        )
    };
    // Refused before a byte is read when its declared length says so.
    if declared_over(&body, limit) {
        return Err(too_large());
    }
    let error = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => return Ok(bytes),
        Err(e) => e.into_inner(),
    };
    if error.is::<http_body_util::LengthLimitError>() {
        return Err(too_large());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the request body could not be read",
    ))
}

/// The client's address, as the host saw it: the TCP peer locally, API Gateway's
/// `requestContext.http.sourceIp` on Lambda. Never a forwarded header.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

#[cfg(test)]
mod tests {
    use super::{bearer_of, encoded, parse_json};
    use axum::http::{header::AUTHORIZATION, HeaderMap, HeaderValue};

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        to: String,
        role: Option<crate::domain::Role>,
    }

    fn refusal(body: &str) -> String {
        match parse_json::<Body>(body.as_bytes()) {
            Ok(b) => panic!("{body} was taken: {b:?}"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn an_unknown_enum_value_names_the_choices_once_spaced() {
        let said = refusal(r#"{"to":"+60123450701","role":"superuser"}"#);
        assert!(
            said.contains("unknown value, expected one of `read_only`"),
            "{said}"
        );
        assert!(said.contains("(at `role`)"), "{said}");
        assert!(!said.contains("  "), "{said}");
    }

    #[test]
    fn a_field_given_twice_is_named() {
        let said = refusal(r#"{"to":"+60123450701","to":"+60123450702"}"#);
        assert!(said.contains("duplicate field `to`"), "{said}");
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_nothing_else_is_a_token() {
        assert_eq!(bearer_of(&with("Bearer kirim_abc")), Some("kirim_abc"));
        assert_eq!(bearer_of(&with("bearer kirim_abc")), Some("kirim_abc"));
        assert_eq!(bearer_of(&with("BEARER  kirim_abc ")), Some("kirim_abc"));
        assert_eq!(bearer_of(&with("Basic a2lyaW0=")), None);
    }

    #[test]
    fn two_authorization_headers_name_no_credential() {
        let mut h = with("Bearer kirim_abc");
        h.append(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer kirim_other"),
        );
        assert_eq!(bearer_of(&h), None);
        assert_eq!(bearer_of(&with("Bearerkirim_abc")), None);
        assert_eq!(bearer_of(&HeaderMap::new()), None);
    }

    #[test]
    fn a_compressed_body_is_refused_and_identity_or_no_encoding_is_read() {
        use axum::http::header::CONTENT_ENCODING;
        let enc = |vs: &[&str]| {
            let mut h = HeaderMap::new();
            for v in vs {
                h.append(CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            encoded(&h).map(|e| {
                assert!(e.accept_identity, "the 415 names the coding taken");
                e.status.as_u16()
            })
        };
        assert_eq!(enc(&[]), None);
        assert_eq!(enc(&["identity"]), None);
        assert_eq!(enc(&["Identity "]), None);
        assert_eq!(enc(&["gzip"]), Some(415));
        assert_eq!(enc(&["identity, gzip"]), Some(415));
        assert_eq!(enc(&["identity", "br"]), Some(415));
        assert_eq!(enc(&["deflate"]), Some(415));
        assert_eq!(enc(&["ZSTD"]), Some(415));
        assert_eq!(
            enc(&["UTF-8"]),
            None,
            "a charset given as the coding: read as before"
        );
    }
}
