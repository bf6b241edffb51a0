//! The AWS SDK's HTTP client, on the reqwest client the Meta adapter already links.
//!
//! The SDK's own client (`aws-smithy-http-client`) brings a second HTTP stack with it:
//! hyper's HTTP/2 (`h2`), a proxy layer and its connector, about 0.45 MiB of code in every
//! function (issue #13: small functions; BENCHMARKS.md "Small functions"). DynamoDB, SQS,
//! Secrets Manager and KMS all speak HTTP/1.1 with small JSON bodies, which reqwest (rustls
//! on `ring`, HTTP/1.1 only, as built here) does as well.
//!
//! Behaviour kept from the SDK's client: one connection pool per connect timeout (the
//! SDK's timeout settings, 3.1 s by default), TCP_NODELAY, and errors in the SDK's classes
//! so its retry strategy and `classify` see the same thing: a timeout is
//! [`ConnectorError::timeout`], a failed connection or a broken response
//! [`ConnectorError::io`] (both retried), a request reqwest cannot build
//! [`ConnectorError::user`]. The SDK's read timeout, when set, bounds the whole exchange
//! (reqwest times a request as a whole). Proxies: none, as with the SDK's client by default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

/// The client every AWS SDK client of a process shares ([`SharedHttpClient`]).
pub fn shared_client() -> SharedHttpClient {
    SharedHttpClient::new(ReqwestClient::default())
}

/// Hands out one connector (one reqwest client, one pool) per connect timeout.
#[derive(Debug, Default)]
struct ReqwestClient {
    pools: Mutex<HashMap<Option<Duration>, reqwest::Client>>,
}

impl HttpClient for ReqwestClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let connect = settings.connect_timeout();
        let client = {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools
                .entry(connect)
                .or_insert_with(|| build(connect))
                .clone()
        };
        SharedHttpConnector::new(ReqwestConnector {
            client,
            read_timeout: settings.read_timeout(),
        })
    }
}

fn build(connect: Option<Duration>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(c) = connect {
        b = b.connect_timeout(c);
    }
    // Building fails only when the TLS backend cannot start; the plain client then
    // answers every call with that error, as a connector error.
    b.build().unwrap_or_else(|e| {
        tracing::error!(error = %e, "the AWS HTTP client could not be built");
        reqwest::Client::new()
    })
}

#[derive(Debug)]
struct ReqwestConnector {
    client: reqwest::Client,
    read_timeout: Option<Duration>,
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        let timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let request = to_reqwest(request, timeout)?;
            let response = client.execute(request).await.map_err(connector_error)?;
            from_reqwest(response).await
        })
    }
}

/// The SDK's request as reqwest's. Every operation Kirim calls has its body in memory; a
/// streaming body (none here) is refused as a user error rather than sent empty.
fn to_reqwest(
    request: HttpRequest,
    timeout: Option<Duration>,
) -> Result<reqwest::Request, ConnectorError> {
    let request = request
        .try_into_http1x()
        .map_err(|e| ConnectorError::user(e.into()))?;
    let (parts, body) = request.into_parts();
    let bytes = body
        .bytes()
        .ok_or_else(|| ConnectorError::user("a streaming request body".into()))?
        .to_vec();
    let mut request = reqwest::Request::try_from(http::Request::from_parts(parts, bytes))
        .map_err(|e| ConnectorError::user(e.into()))?;
    *request.timeout_mut() = timeout;
    Ok(request)
}

/// reqwest's response as the SDK's, its body read whole (AWS's JSON answers are small).
async fn from_reqwest(response: reqwest::Response) -> Result<HttpResponse, ConnectorError> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(connector_error)?;
    let mut out = http::Response::new(SdkBody::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    HttpResponse::try_from(out).map_err(|e| ConnectorError::other(e.into(), None))
}

/// A reqwest error in the SDK's classes (see the module's documentation).
fn connector_error(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_builder() {
        ConnectorError::user(e.into())
    } else {
        ConnectorError::io(e.into())
    }
}
