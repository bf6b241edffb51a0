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
    let ctx = req.request_context_ref().cloned();
    let (ip, id) = match ctx {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(c)) => {
            (c.http.source_ip.and_then(|s| s.parse().ok()), c.request_id)
        }
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

/// Wraps a router for `lambda_http::run`.
pub fn for_lambda(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(from_api_gateway))
}
