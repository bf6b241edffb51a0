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
//! (reqwest times a request as a whole). The response's body reaches the SDK as a stream,
//! so its stalled-stream protection (on by default: a body that stops arriving for 5 s fails
//! the attempt, which is retried) guards it as it did with the SDK's own client. Proxies:
//! none, as with the SDK's client by default.
//!
//! What reqwest cannot do: hand the SDK the connection a request used, so that a transient
//! error closes it ("connection poisoning"). The SDK configurations say so
//! ([`retry_config`]: every connection is kept, as the SDK's own newer retry behaviour does),
//! or the SDK would log an error on every transient answer. And reqwest parses the request's
//! URI into a URL after it was signed, which lowercases a host and resolves `..` in a path:
//! harmless for the JSON services Kirim calls (every call is `POST /` to the endpoint),
//! not for a REST service with keys in its paths or a mixed-case endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use http_body_util::BodyExt;

/// The client every AWS SDK client of a process shares ([`SharedHttpClient`]).
pub fn shared_client() -> SharedHttpClient {
    SharedHttpClient::new(ReqwestClient::default())
}

/// The retry configuration of every AWS client, with [`shared_client`]: the SDK's standard
/// one (3 attempts, exponential backoff from 1 s), keeping connections across a transient
/// error, which this client cannot single out to close (see the module's documentation).
pub fn retry_config() -> aws_smithy_types::retry::RetryConfig {
    aws_smithy_types::retry::RetryConfig::standard()
        .with_reconnect_mode(aws_smithy_types::retry::ReconnectMode::ReuseAllConnections)
}

/// A reqwest client, or why none could be built (the TLS backend did not start).
type Pool = Result<reqwest::Client, Arc<str>>;

/// Hands out one connector (one reqwest client, one pool) per connect timeout.
#[derive(Debug, Default)]
struct ReqwestClient {
    pools: Mutex<HashMap<Option<Duration>, Pool>>,
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

fn build(connect: Option<Duration>) -> Pool {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(c) = connect {
        b = b.connect_timeout(c);
    }
    // Building fails only when the TLS backend cannot start; every call then fails with
    // that error, as a connector error (`Rejected`: no retry can start it either).
    b.build().map_err(|e| {
        tracing::error!(error = %e, "the AWS HTTP client could not be built");
        Arc::from(format!("the AWS HTTP client could not be built: {e}"))
    })
}

#[derive(Debug)]
struct ReqwestConnector {
    client: Pool,
    read_timeout: Option<Duration>,
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        let timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let client = client.map_err(|e| ConnectorError::user(e.to_string().into()))?;
            let request = to_reqwest(request, timeout).await?;
            let response = client.execute(request).await.map_err(connector_error)?;
            from_reqwest(response)
        })
    }
}

/// The SDK's request as reqwest's. Its body is read through the SDK's own body, which for
/// the in-memory bodies of every operation Kirim calls is at once: reading it to its end
/// is what tells the SDK's stalled-stream protection the upload is complete. A body taken
/// without being read (as `SdkBody::bytes` takes it) counts as an upload that never
/// started, and the SDK cuts any call its service takes over about 6 s to answer as a
/// timeout.
async fn to_reqwest(
    request: HttpRequest,
    timeout: Option<Duration>,
) -> Result<reqwest::Request, ConnectorError> {
    let request = request
        .try_into_http1x()
        .map_err(|e| ConnectorError::user(e.into()))?;
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(ConnectorError::user)?
        .to_bytes();
    let mut request = reqwest::Request::try_from(http::Request::from_parts(parts, bytes))
        .map_err(|e| ConnectorError::user(e.into()))?;
    *request.timeout_mut() = timeout;
    Ok(request)
}

/// reqwest's response as the SDK's, its body a stream the SDK reads (and watches for a
/// stall) itself.
fn from_reqwest(response: reqwest::Response) -> Result<HttpResponse, ConnectorError> {
    let response: http::Response<reqwest::Body> = response.into();
    HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
        .map_err(|e| ConnectorError::other(e.into(), None))
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
