//! Kirim: a multi-tenant WhatsApp Business API platform. This crate holds everything that
//! is not a Lambda entry point: domain types, ports, adapters, services and HTTP routers.

pub mod adapters;
pub mod alloc;
pub mod config;
pub mod console;
pub mod domain;
pub mod http;
pub mod iam;
pub mod metrics;
pub mod ports;
#[cfg(test)]
mod props;
pub mod queue_handlers;
pub mod secret;
pub mod service;
pub mod store_error;
pub mod telemetry;
pub mod wiring;
