//! The one mapping from errors to HTTP, and the middleware that gives every response an
//! `x-request-id` and every error the contract's body.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::errors::ServiceError;

/// Error code and message, attached to a response; the middleware renders the body
/// (it knows the request id).
#[derive(Clone, Debug)]
pub struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `Retry-After` in whole seconds (a `429`).
    pub retry_after: Option<u64>,
    /// `Accept-Encoding: identity`: the `415` of a compressed body names the one content
    /// coding taken (RFC 9110 §15.5.16, §12.5.3).
    pub accept_identity: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            accept_identity: false,
        }
    }
    /// `429 rate_limited` with `Retry-After` (whole seconds, at least one).
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// `400` for a query parameter the route does not take, naming it as [`echoed`] does.
    pub fn unknown_query_parameter(name: &str) -> Self {
        Self::invalid(format!(
            "unknown query parameter `{}`",
            echoed(name, ECHOED_NAME)
        ))
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use ServiceError::*;
        match e {
            InvalidRequest(m) => ApiError::invalid(m),
            CredentialRefused { message, .. } => ApiError::invalid(message),
            InvalidPhoneNumber => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_phone_number",
                "phone numbers must be E.164 with a leading + and a country code in use (e.g. +60123456789)",
            ),
            Unauthenticated => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing or invalid credentials",
            ),
            Forbidden => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "your role does not allow this",
            ),
            TotpEnrollmentRequired => ApiError::new(
                StatusCode::FORBIDDEN,
                "totp_enrollment_required",
                "this tenant requires two-factor authentication: enroll with \
                 POST /v1/auth/2fa/enroll and POST /v1/auth/2fa/confirm first (if you \
                 have enrolled since this session began, sign in again with a code)",
            ),
            IpNotAllowed => ApiError::new(
                StatusCode::FORBIDDEN,
                "ip_not_allowed",
                "requests with this key are not allowed from this address",
            ),
            MarketingPaused => ApiError::new(
                StatusCode::FORBIDDEN,
                "marketing_paused",
                "marketing templates are paused while this account's opt-out or undeliverable rate is above its limit; utility and authentication templates still go",
            ),
            TenantSuspended => ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_suspended",
                "this account is suspended; contact your provider",
            ),
            InsufficientCredits => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_credits",
                "not enough credits; ask your provider for a top-up",
            ),
            NotFound => ApiError::not_found(),
            Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            RecipientOptedOut => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "recipient_opted_out",
                "the recipient has opted out of these messages; nothing was sent or debited",
            ),
            OutsideCustomerServiceWindow => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "outside_customer_service_window",
                "the user has not written to this number in the last 24 hours, so Meta would refuse a session text; send a template. Nothing was sent or debited",
            ),
            IdempotencyKeyReused => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body",
            ),
            RateLimited { retry_after_secs } => ApiError::rate_limited(
                "too many requests; retry after the number of seconds in Retry-After",
                retry_after_secs,
            ),
            TemplateNotFound(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "template_not_found", m)
            }
            TemplateNotApproved(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "template_not_approved", m)
            }
            TemplateCategoryMismatch(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "template_category_mismatch",
                m,
            ),
            TemplateParametersMismatch(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "template_parameters_mismatch",
                m,
            ),
            UnknownSender(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_sender", m)
            }
            SenderHeld(m) => ApiError::new(StatusCode::FORBIDDEN, "sender_held", m),
            MetaUnavailable(m) => {
                tracing::warn!(detail = %m, "meta unavailable");
                ApiError::new(StatusCode::BAD_GATEWAY, "meta_unavailable", m)
            }
            Unavailable(inner) => {
                tracing::error!(error = %inner, "backend unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "temporarily unavailable; retry (with the same Idempotency-Key, if the request had one)",
                )
            }
            Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.accept_identity {
            res.headers_mut().insert(
                axum::http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        res.extensions_mut().insert(ErrorInfo {
            code: self.code,
            message: self.message,
        });
        res
    }
}

/// An id the request arrived with (API Gateway's, set by `http::lambda`): the request-id
/// layer takes it as the request's id instead of minting one. Handlers read the id from
/// `telemetry::request_id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn fallback_info(status: StatusCode) -> ErrorInfo {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("payload_too_large", "request bodies are limited to 256 KiB")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("invalid_request", "send application/json"),
        s if s.is_server_error() => ("internal", "internal error"),
        _ => ("invalid_request", "invalid request"),
    };
    ErrorInfo {
        code,
        message: message.into(),
    }
}

/// Gives each request an id (the Lambda's request id when present), echoes it in
/// `x-request-id`, and renders every error in the contract's one shape — including
/// errors from routing and extractors that never reached a handler. A service of its own
/// rather than `middleware::from_fn`, which boxes a clone of the inner service and two
/// futures on every request (BENCHMARKS.md "Fewer layers on the request path").
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;

    fn layer(&self, inner: S) -> RequestIds<S> {
        RequestIds { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIds<S> {
    inner: S,
}

impl<S> tower::Service<Request> for RequestIds<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The service polled ready is the one called; a clone stays for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let answer = with_request_id(req, None, |req| async move {
            if super::extract::declared_over(req.body(), super::extract::MAX_BODY) {
                return super::extract::too_large().into_response();
            }
            let mut inner = inner;
            match inner.call(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        });
        Box::pin(futures::FutureExt::map(answer, Ok))
    }
}

/// What [`RequestIdLayer`] does around `handle`, for a caller that routes the request
/// itself and so knows its `route` (Meta's webhook, `http::MetaFirst`).
///
/// Not an `async fn`: an async fn keeps its arguments in its future for as long as it runs,
/// and the request alone is 240 bytes, copied again wherever the future is moved or boxed
/// (the webhook boxes it: BENCHMARKS.md "Webhook side by side", stop 27). The request is
/// handed to `handle` before the future is made.
pub(crate) fn with_request_id<F, Fut>(
    mut req: Request,
    route: Option<&'static str>,
    handle: F,
) -> impl std::future::Future<Output = Response>
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    // Taken, not copied: the id lives on in the task (`telemetry::request_id`) and the span.
    let id = req
        .extensions_mut()
        .remove::<RequestId>()
        .map(|r| r.0)
        .unwrap_or_else(crate::domain::new_id);
    let method = req.method().clone();
    let run = handle(req);
    // The answer's header first, so that the id itself can go to the request's task.
    // (An id that is not a plain ASCII header, which neither ours nor API Gateway's are, is
    // kept for an error's body.)
    let header = match HeaderValue::from_str(&id) {
        Ok(h) if h.to_str().is_ok() => Ok(h),
        _ => Err(id.clone()),
    };
    async move {
        let res = crate::telemetry::in_request(id, method, route, run).await;
        answered(res, header)
    }
}

/// A client's text as an error message repeats it (an unknown field's or query parameter's
/// name): at most `max` characters, then `…`, and a control or invisible formatting
/// character written as its escape (`\u{202e}`), so an answer is bounded whatever was sent
/// and shows what was sent.
pub fn echoed(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 2));
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if crate::domain::text::hidden_or_control(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// What [`ApiError::unknown_query_parameter`] repeats of the parameter's name.
pub const ECHOED_NAME: usize = 64;

/// The response with the request id: in an error's body, as the error's shape asks, and in
/// the `x-request-id` header.
fn answered(mut res: Response, header: Result<HeaderValue, String>) -> Response {
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        let info = res
            .extensions()
            .get::<ErrorInfo>()
            .cloned()
            .unwrap_or_else(|| fallback_info(status));
        let body = json!({
            "error": {"code": info.code, "message": info.message},
            "request_id": match &header {
                Ok(h) => h.to_str().unwrap_or_default(),
                Err(id) => id.as_str(),
            },
        });
        let headers = std::mem::take(res.headers_mut());
        let mut new = (status, axum::Json(body)).into_response();
        for (k, v) in headers.iter() {
            if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
                new.headers_mut().insert(k.clone(), v.clone());
            }
        }
        res = new;
    }
    let headers = res.headers_mut();
    if let Ok(v) = header {
        headers.insert("x-request-id", v);
    }
    // Every answer is what its `Content-Type` says: a browser never sniffs one into HTML
    // (the handshake's echoed `text/plain` challenge, an error naming what a client sent).
    headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// The `x-request-id` header alone (the Lambda's request id when present, else a new
/// one), for routes that keep their own answers (the console's HTML pages, the sandbox's
/// Meta-shaped errors): API.md promises the header on every response. An answer that has
/// one already keeps it.
pub async fn request_id_header(req: Request, next: axum::middleware::Next) -> Response {
    let id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(crate::domain::new_id);
    let mut res = next.run(req).await;
    if !res.headers().contains_key("x-request-id") {
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut().insert("x-request-id", v);
        }
    }
    res
}

pub fn empty(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_error::StoreError;

    #[test]
    fn a_backend_refusal_is_a_bare_500_that_names_nothing_of_the_backend() {
        for store in [
            StoreError::Rejected("dynamodb put: ValidationException (http 400)".into()),
            StoreError::Misconfigured("dynamodb get: AccessDeniedException (http 400)".into()),
        ] {
            let service = ServiceError::from(store);
            assert!(!service.is_retryable());
            let api = ApiError::from(service);
            assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(api.code, "internal");
            assert_eq!(api.message, "internal error");
        }
    }

    #[test]
    fn an_unavailable_backend_is_a_503_worth_retrying() {
        let service = ServiceError::from(StoreError::Unavailable("throttled".into()));
        assert!(service.is_retryable());
        assert_eq!(
            ApiError::from(service).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
