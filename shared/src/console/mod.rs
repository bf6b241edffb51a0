//! The console: HTML pages at `/console/` for a tenant's people (admins, operators,
//! read-only users), signed in with email, password and TOTP.
//!
//! It holds no business rule. Every action is a request to the API's own router, in
//! process ([`api`]), with the user's session token: the same route×role table
//! (`http::access::ROUTES`), services, validation and audit as any API client. The
//! pages only decide what to *offer*, by asking the same table ([`may`]).
//!
//! Served by local mode (merged into its app) and by the `console` Lambda
//! (`ANY /console/{proxy+}`).

mod api;
pub mod campaigns;
mod catalogue;
mod pages;
pub mod security;
mod senders;
pub mod usage;
mod views;

use axum::http::Method;
use axum::Router;

use crate::domain::Role;
use crate::http::access::{rule_for, Access};
use crate::service::Deps;

pub use security::csrf_key_name;

#[derive(Clone, Copy, Debug)]
pub struct ConsoleOptions {
    /// `Secure` cookies (everywhere but local mode's plain http).
    pub secure_cookies: bool,
}

#[derive(Clone)]
pub(crate) struct ConsoleState {
    /// Shared, not copied per request (as `http::AppState`'s).
    pub deps: std::sync::Arc<Deps>,
    pub api: api::Api,
    pub options: ConsoleOptions,
}

/// The console's routes (all under `/console`), with its security headers. The API it
/// calls is built here from the same deps: `http::app`'s routers and layers.
pub fn console_router(deps: Deps, options: ConsoleOptions) -> Router {
    let api = api::Api::new(crate::http::app(deps.clone(), Router::new()).into());
    let secure = options.secure_cookies;
    let deps = std::sync::Arc::new(deps);
    let router = pages::routes()
        .merge(catalogue::routes())
        .merge(campaigns::routes())
        .merge(usage::routes())
        .with_state(ConsoleState {
            deps: deps.clone(),
            api,
            options,
        })
        .layer(axum::middleware::from_fn(pages::errors_in_frame))
        .layer(axum::middleware::from_fn(security::headers));
    // Served over HTTPS only (API Gateway): browsers are told to keep to it, should a
    // custom domain or a proxy in front ever also answer plain HTTP. Not in local mode's
    // plain http, where a browser would then refuse `localhost` without TLS.
    // Over HTTPS the cookies are `__Host-` ones: a browser's cookies of the old names are
    // removed (and an old session ended) as they arrive.
    let router = if secure {
        router
            .layer(axum::middleware::from_fn_with_state(
                deps,
                security::retire_old_cookies,
            ))
            .layer(axum::middleware::from_fn(security::strict_transport))
    } else {
        router
    };
    router.layer(axum::middleware::from_fn(
        crate::http::error::request_id_header,
    ))
}

/// Whether `role` may call the API route `method path` (a path template of
/// `http::access::ROUTES`): what the console offers. The API checks again.
pub fn may(role: Role, method: &str, path: &str) -> bool {
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return false;
    };
    match rule_for(&method, path).map(|r| r.access) {
        Some(Access::Tenant(required)) => role.includes(required),
        Some(Access::Session) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_console_offers_follows_the_access_table() {
        assert!(may(Role::ReadOnly, "GET", "/v1/messages"));
        assert!(!may(Role::ReadOnly, "POST", "/v1/messages"));
        assert!(may(Role::Operator, "POST", "/v1/messages"));
        assert!(may(Role::Operator, "PUT", "/v1/opt-outs/{key}"));
        assert!(!may(Role::Operator, "DELETE", "/v1/opt-outs/{key}"));
        assert!(may(Role::Admin, "POST", "/v1/api-keys"));
        assert!(!may(Role::Operator, "GET", "/v1/api-keys"));
        assert!(may(Role::ReadOnly, "POST", "/v1/auth/2fa/enroll"));
        // Platform routes and unknown routes are never offered.
        assert!(!may(Role::Admin, "POST", "/v1/platform/tenants"));
        assert!(!may(Role::Admin, "GET", "/v1/no-such-route"));
    }
}
