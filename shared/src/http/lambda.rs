//! Serving a router on Lambda: API Gateway's request id and source IP become the same
//! extensions local mode sets, so handlers never know which host runs them.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use lambda_http::RequestExt;

use super::error::RequestId;
use super::extract::ClientIp;

async fn from_api_gateway(mut req: Request, next: Next) -> Response {
    // Borrowed: the context is a few dozen strings, of which two are wanted.
    let (ip, id) = match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(c)) => (
            c.http.source_ip.as_deref().and_then(|s| s.parse().ok()),
            c.request_id.clone(),
        ),
        _ => (None, None),
    };
    req.extensions_mut().insert(ClientIp(ip));
    if let Some(id) = id {
        req.extensions_mut().insert(RequestId(id));
    }
    let res = next.run(req).await;
    // The invocation ends with its response: its metric lines go out now.
    crate::metrics::flush();
    res
}

/// Wraps a router (or [`super::MetaFirst`]) for `lambda_http::run`.
pub fn for_lambda(router: impl Into<Router>) -> Router {
    router
        .into()
        .layer(axum::middleware::from_fn(from_api_gateway))
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// The metric buffer is the process's: another test's flush may empty it at any
    /// moment. An invocation whose value was no longer buffered inside its handler (taken
    /// by such a flush) says nothing, and is tried again, up to five times.
    #[tokio::test]
    async fn a_lambda_invocation_s_metric_lines_leave_before_its_response() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        for _ in 0..5 {
            let marker = format!("flush-test-{}", ulid::Ulid::new());
            let dim = marker.clone();
            let buffered = Arc::new(AtomicBool::new(false));
            let seen = buffered.clone();
            let router = for_lambda(Router::new().route(
                "/",
                get(move || async move {
                    crate::metrics::count("TestOnly", ("Marker", &dim));
                    seen.store(crate::metrics::buffered_contains(&dim), Ordering::SeqCst);
                    "ok"
                }),
            ));
            let req = axum::http::Request::builder()
                .uri("/")
                .body(axum::body::Body::empty())
                .unwrap();
            let res = router.oneshot(req).await.unwrap();
            assert_eq!(res.status(), 200);
            if !buffered.load(Ordering::SeqCst) {
                continue;
            }
            assert!(
                !crate::metrics::buffered_contains(&marker),
                "written when the invocation answered"
            );
            return;
        }
        panic!("the value was never seen buffered inside its handler");
    }
}
