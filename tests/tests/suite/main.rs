//! One integration test binary (one link, one moto): the port contract suite on both
//! adapters, and end-to-end flows through local mode on both backends.

mod access;
mod audit;
mod contract;
mod contract_access;
mod contract_optouts;
mod contract_throttle;
mod contract_users;
mod e2e;
mod http_edges;
mod idempotency;
mod optouts;
mod privacy;
mod quality;
mod throughput;
mod users;
