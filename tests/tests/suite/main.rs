//! One integration test binary (one link, one moto): the port contract suite on both
//! adapters, and end-to-end flows through local mode on both backends.

/// Runs each named `async fn(Backend)` as two tests: on the memory backend and on the
/// AWS backend against moto.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory_backend {
            $( #[tokio::test] async fn $name() { super::$name(kirim::config::Backend::Memory).await } )*
        }
        mod aws_backend_on_moto {
            $( #[tokio::test] async fn $name() { super::$name(kirim::config::Backend::Aws).await } )*
        }
    };
}

mod access;
mod audit;
mod audit_intents;
mod aws_errors;
mod broadcast_lookups;
mod broadcasts;
mod caches;
mod callback_failures;
mod callbacks;
mod campaigns;
mod console;
mod console_browser;
mod console_pages;
mod console_run;
mod contract;
mod contract_access;
mod contract_broadcasts;
mod contract_callbacks;
mod contract_contacts;
mod contract_credit_lanes;
mod contract_data_keys;
mod contract_leases;
mod contract_numbers;
mod contract_optouts;
mod contract_refunds;
mod contract_retention;
mod contract_retention_items;
mod contract_templates;
mod contract_throttle;
mod contract_users;
mod cost_proxy;
mod crash_recovery;
mod deadletters;
mod demo_script;
mod e2e;
mod fan_out_chain;
mod gateway_routes;
mod heavy;
mod http_edges;
mod idempotency;
mod known_users;
mod limits;
mod meta_token;
mod numbers;
mod openapi_agreement;
mod optouts;
mod platform_audit;
mod privacy;
mod quality;
mod retention;
mod signed_requests;
mod spans;
mod stale_reads;
mod stepped_audit;
mod templates;
mod throughput;
mod totp_at_rest;
mod users;
mod webhook_batches;
mod wiring;
