//! Kirim: a multi-tenant WhatsApp Business API platform. This crate holds everything that
//! is not a Lambda entry point: domain types, ports, adapters, services and HTTP routers.

pub mod adapters;
pub mod config;
pub mod domain;
pub mod error;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod ports;
#[cfg(test)]
mod props;
pub mod runtime;
pub mod secret;
pub mod service;
pub mod telemetry;
