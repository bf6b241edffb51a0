//! Logging setup: JSON on Lambda, human-readable locally, and the request span. Log
//! lines carry ids and masked phone numbers only (see `domain::mask_phone`); never
//! content or secrets. Ids come from spans, not from each call: an HTTP request runs in
//! a `request` span (request id, route, tenant, message), a queue job in a `job` span
//! (its ids and the id of the request that accepted it).

use tracing_subscriber::EnvFilter;

pub fn init_json() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Span fields (request id, tenant, message) ride on every line as `spans`.
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .without_time() // CloudWatch stamps each line
        .try_init();
}

pub fn init_pretty() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .try_init();
}

tokio::task_local! {
    /// The id of the HTTP request being served (set by the request-id layer).
    static REQUEST_ID: String;
}

/// Runs `fut` as the handling of request `id`: in a `request` span that carries the id
/// (and gets the route, tenant and message ids recorded as they become known), with the
/// id readable through [`request_id`] (so a queued job can carry it on). The raw path is
/// not logged: it can hold a phone number.
pub async fn in_request<F: std::future::Future>(id: String, method: &str, fut: F) -> F::Output {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
        message_id = tracing::field::Empty,
    );
    REQUEST_ID.scope(id, fut.instrument(span)).await
}

/// The id of the HTTP request this task serves, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Records the tenant a request or job acts for on the current span.
pub fn record_tenant(tenant: &impl std::fmt::Display) {
    tracing::Span::current().record("tenant_id", tracing::field::display(tenant));
}
